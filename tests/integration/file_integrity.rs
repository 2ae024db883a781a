//! Truncated, corrupted and foreign files are refused at open with a clear
//! error, never read out of bounds; corrupt tensor data is caught by verify.

use crate::common;

use common::small;
use mmoe::format::reader::{parse, verify_checksums};
use mmoe::format::HEADER_LEN;
use mmoe::{DType, ErrorKind, Model, OpenOptions};

#[test]
fn every_truncation_is_refused() {
    let (_, _, packed) = small(DType::F16);
    let bytes = packed.bytes();
    assert!(parse(&bytes).is_ok());
    for len in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        let err = parse(&bytes[..len]).expect_err("truncated file must be refused");
        assert!(
            matches!(err.kind(), ErrorKind::Format),
            "truncation at {len}: {err}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    let err = parse(&longer).expect_err("appended byte must be refused");
    assert!(err.message().contains("truncated or appended"), "{err}");
}

#[test]
fn every_byte_of_header_config_and_table_is_guarded() {
    let (_, _, packed) = small(DType::F16);
    let bytes = packed.bytes();
    let layout = parse(&bytes).unwrap();
    let meta_end = layout.header.names_offset as usize + layout.header.names_len as usize;
    let mut refused = 0;
    for i in 0..meta_end {
        for flip in [0x01u8, 0x80] {
            let mut corrupt = bytes.clone();
            corrupt[i] ^= flip;
            match parse(&corrupt) {
                Err(_) => refused += 1,
                Ok(_) => panic!("a flip of bit {flip:#x} in byte {i} was accepted"),
            }
        }
    }
    assert_eq!(refused, 2 * meta_end);
}

#[test]
fn corrupt_tensor_data_is_caught_by_verify_naming_the_tensor() {
    let (_, _, packed) = small(DType::F16);
    let bytes = packed.bytes();
    let layout = parse(&bytes).unwrap();
    verify_checksums(&bytes, &layout).expect("intact file verifies");
    for tensor in &layout.tensors {
        let mut corrupt = bytes.clone();
        let middle = tensor.bytes.start + tensor.bytes.len() / 2;
        corrupt[middle] ^= 0x10;
        // Tensor data is not read at open, so the layout still parses…
        let corrupt_layout = parse(&corrupt).expect("data corruption is not seen by parse");
        // …and verify names the tensor.
        let err = verify_checksums(&corrupt, &corrupt_layout).expect_err("verify must fail");
        assert_eq!(err.kind(), ErrorKind::Checksum);
        assert!(
            err.message().contains(&format!("`{}`", tensor.name)),
            "{err}"
        );
    }
    // Through the API: open with verification refuses the file.
    let mut corrupt = bytes.clone();
    let last = &layout.tensors[layout.tensors.len() - 1];
    corrupt[last.bytes.start] ^= 1;
    std::fs::write(&packed.path, &corrupt).unwrap();
    assert!(Model::open(&packed.path, &OpenOptions::default()).is_ok());
    let err = Model::open(
        &packed.path,
        &OpenOptions {
            verify_checksums: true,
            ..OpenOptions::default()
        },
    )
    .unwrap_err();
    assert!(err.message().contains(&last.name), "{err}");
}

#[test]
fn foreign_and_future_files_are_refused_with_a_reason() {
    let (_, _, packed) = small(DType::F32);
    let bytes = packed.bytes();
    let with = |offset: usize, value: &[u8]| {
        let mut b = bytes.clone();
        b[offset..offset + value.len()].copy_from_slice(value);
        parse(&b).unwrap_err().to_string()
    };
    assert!(with(0, b"GGUF").contains("bad magic"));
    assert!(with(8, &2u32.to_le_bytes()).contains("format version 2 is not supported"));
    assert!(with(12, &0x0102_0304u32.to_be_bytes()).contains("byte order"));
    assert!(with(16, &9u32.to_le_bytes()).contains("layout version 9"));
    assert!(with(20, &7u32.to_le_bytes()).contains("unknown dtype"));
    assert!(parse(&bytes[..HEADER_LEN - 1])
        .unwrap_err()
        .to_string()
        .contains("shorter than"));
    let missing =
        Model::open(packed.dir.path().join("nope.mmoe"), &OpenOptions::default()).unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::Io);
    assert!(missing.message().contains("nope.mmoe"), "{missing}");
}

/// A directory where a file is expected is named as such (mapping one
/// failed with "No such device").
#[test]
fn a_directory_is_refused_as_one() {
    let dir = test_support::tempdir().unwrap();
    let e = Model::open(dir.path(), &OpenOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.message().contains("is a directory, not a file"), "{e}");
    let e = mmoe::format::safetensors_source::SafetensorsSource::open(dir.path())
        .err()
        .expect("refused");
    assert!(e.message().contains("is a directory, not a file"), "{e}");
}
