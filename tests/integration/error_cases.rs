//! Every status a model file can cause at open, through Rust and through the
//! C ABI, on files made here: missing, not a model, a corrupt header, a
//! config that breaks a MODEL.md rule (checksum valid), a tensor record whose
//! shape disagrees with the config (checksum valid), corrupt tensor data
//! (with verify), and a CUDA device where there is none. The cases and the
//! status each must give are written to `target/tmp/error-cases/manifest.tsv`,
//! which `c-examples/errors.c` and the Java tests replay through their own
//! interfaces (docs/ERRORS.md).

use crate::common;

use std::ffi::CString;
use std::path::{Path, PathBuf};

use mmoe::ffi::{
    mmoe_device, mmoe_engine, mmoe_engine_free, mmoe_engine_open, mmoe_open_options,
    mmoe_open_options_default, mmoe_status,
};
use mmoe::format::{meta_checksum, FileHeader, HEADER_LEN};
use mmoe::{DType, Device, ErrorKind, Model, OpenOptions};

struct Case {
    status: &'static str,
    path: PathBuf,
    cuda: bool,
    verify: bool,
    what: &'static str,
}

/// Rewrites the header's meta checksum to match the (edited) metadata.
fn fix_checksum(bytes: &mut [u8]) {
    let mut header: FileHeader = bytemuck::pod_read_unaligned(&bytes[..HEADER_LEN]);
    let region = |offset: u64, len: u64| offset as usize..(offset + len) as usize;
    let config = &bytes[region(header.config_offset, header.config_len)];
    let table = &bytes[region(header.table_offset, header.table_len)];
    let names = &bytes[region(header.names_offset, header.names_len)];
    header.meta_checksum = meta_checksum(&header, config, table, names);
    bytes[..HEADER_LEN].copy_from_slice(bytemuck::bytes_of(&header));
}

/// Replaces `from` by `to` (same length) in the config region.
fn edit_config(bytes: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let header: FileHeader = bytemuck::pod_read_unaligned(&bytes[..HEADER_LEN]);
    let start = header.config_offset as usize;
    let config = &mut bytes[start..start + header.config_len as usize];
    let at = config
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("`{from}` is not in the config"));
    config[at..at + to.len()].copy_from_slice(to.as_bytes());
    fix_checksum(bytes);
}

fn make_cases(dir: &Path) -> Vec<Case> {
    let (_, _, packed) = common::small(DType::F16);
    let pristine = packed.bytes();
    let header: FileHeader = bytemuck::pod_read_unaligned(&pristine[..HEADER_LEN]);
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let mut cases = Vec::new();
    let mut case = |status, path, cuda, verify, what| {
        cases.push(Case {
            status,
            path,
            cuda,
            verify,
            what,
        })
    };
    case(
        "OK",
        write("good.mmoe", &pristine),
        false,
        true,
        "a good model, verified",
    );
    case(
        "IO",
        dir.join("missing.mmoe"),
        false,
        false,
        "a file that does not exist",
    );
    case(
        "FORMAT",
        write("not-a-model.mmoe", b"this is not a packed model\n"),
        false,
        false,
        "a text file",
    );
    let mut corrupt_meta = pristine.clone();
    corrupt_meta[header.config_offset as usize + 3] ^= 0x01;
    case(
        "CHECKSUM",
        write("corrupt-header.mmoe", &corrupt_meta),
        false,
        false,
        "one bit of the config flipped",
    );
    let mut corrupt_data = pristine.clone();
    corrupt_data[header.data_offset as usize + 5] ^= 0x10;
    case(
        "CHECKSUM",
        write("corrupt-data.mmoe", &corrupt_data),
        false,
        true,
        "one bit of tensor data flipped, opened with verify",
    );
    let mut bad_config = pristine.clone();
    edit_config(&mut bad_config, "\"expert_dim\":8", "\"expert_dim\":0");
    case(
        "CONFIG",
        write("bad-config.mmoe", &bad_config),
        false,
        false,
        "expert_dim 0 (checksum valid)",
    );
    let mut bad_shape = pristine.clone();
    {
        // The first tensor record's first dimension, off by one.
        let at = header.table_offset as usize + 16;
        let mut dim = u64::from_le_bytes(bad_shape[at..at + 8].try_into().unwrap());
        dim += 1;
        bad_shape[at..at + 8].copy_from_slice(&dim.to_le_bytes());
        fix_checksum(&mut bad_shape);
    }
    // (TENSOR is the packer's status for a misshaped input tensor; a packed
    // file whose record disagrees with its config is a FORMAT error.)
    case(
        "FORMAT",
        write("bad-shape.mmoe", &bad_shape),
        false,
        false,
        "a tensor record's shape disagrees with the config (checksum valid)",
    );
    if !has_gpu() {
        case(
            "DEVICE",
            dir.join("good.mmoe"),
            true,
            false,
            "a CUDA device on a machine without one",
        );
    }
    cases
}

fn has_gpu() -> bool {
    mmoe::gpu::check_device(0).is_ok()
}

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Io => "IO",
        ErrorKind::Config => "CONFIG",
        ErrorKind::Tensor => "TENSOR",
        ErrorKind::Format => "FORMAT",
        ErrorKind::Checksum => "CHECKSUM",
        ErrorKind::Request => "REQUEST",
        ErrorKind::Argument => "ARGUMENT",
        ErrorKind::Device => "DEVICE",
    }
}

fn status_name(status: mmoe_status) -> &'static str {
    match status {
        mmoe_status::MMOE_STATUS_OK => "OK",
        mmoe_status::MMOE_STATUS_IO => "IO",
        mmoe_status::MMOE_STATUS_CONFIG => "CONFIG",
        mmoe_status::MMOE_STATUS_TENSOR => "TENSOR",
        mmoe_status::MMOE_STATUS_FORMAT => "FORMAT",
        mmoe_status::MMOE_STATUS_CHECKSUM => "CHECKSUM",
        mmoe_status::MMOE_STATUS_REQUEST => "REQUEST",
        mmoe_status::MMOE_STATUS_ARGUMENT => "ARGUMENT",
        mmoe_status::MMOE_STATUS_DEVICE => "DEVICE",
        mmoe_status::MMOE_STATUS_INTERNAL => "INTERNAL",
    }
}

#[test]
fn every_open_error_has_its_status_in_rust_and_c() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("error-cases");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cases = make_cases(&dir);
    let mut manifest = String::from("# status\tpath\tdevice\tverify\twhat\n");
    for case in &cases {
        let options = OpenOptions {
            device: if case.cuda {
                Device::Cuda(0)
            } else {
                Device::Cpu
            },
            verify_checksums: case.verify,
            ..OpenOptions::default()
        };
        let rust = match Model::open(&case.path, &options) {
            Ok(_) => "OK",
            Err(e) => {
                // The message names the file.
                let name = case.path.file_name().unwrap().to_str().unwrap();
                assert!(e.message().contains(name), "{}: {e}", case.what);
                kind_name(e.kind())
            }
        };
        assert_eq!(rust, case.status, "Rust, {}", case.what);

        let mut c_options: mmoe_open_options = mmoe_open_options_default();
        if case.cuda {
            c_options.device = mmoe_device::MMOE_DEVICE_CUDA;
        }
        c_options.verify_checksums = case.verify as u32;
        let path = CString::new(case.path.to_str().unwrap()).unwrap();
        let mut engine: *mut mmoe_engine = std::ptr::null_mut();
        let status = mmoe_engine_open(path.as_ptr(), &c_options, &mut engine);
        mmoe_engine_free(engine);
        assert_eq!(status_name(status), case.status, "C ABI, {}", case.what);
        println!("{:<9} {}", case.status, case.what);
        manifest.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            case.status,
            case.path.display(),
            if case.cuda { "cuda" } else { "cpu" },
            case.verify as u8,
            case.what
        ));
    }
    std::fs::write(dir.join("manifest.tsv"), manifest).unwrap();
}
