//! The C ABI from Rust: version macros match Cargo, every pointer and length
//! is checked, errors carry a status and a message, outputs are written only
//! on success.

use crate::common;

use std::ffi::{CStr, CString};
use std::ptr::{null, null_mut};

use common::{c_feature as feature, small};
use mmoe::ffi::*;
use mmoe::DType;

fn last_error() -> String {
    let needed = mmoe_last_error(null_mut(), 0);
    let mut buf = vec![0u8; needed + 1];
    mmoe_last_error(buf.as_mut_ptr() as *mut _, buf.len());
    CStr::from_bytes_until_nul(&buf)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn version_macros_match_cargo() {
    let header =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/mmoe.h")).unwrap();
    let define = |name: &str| -> u32 {
        header
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from mmoe.h"))
    };
    let (major, minor, patch) = (
        define("MMOE_VERSION_MAJOR"),
        define("MMOE_VERSION_MINOR"),
        define("MMOE_VERSION_PATCH"),
    );
    let cargo: Vec<u32> = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(vec![major, minor, patch], cargo);
    // The combined number keeps every part (rustls-ffi once dropped PATCH).
    assert_eq!(
        define("MMOE_VERSION_NUMBER"),
        major * 10000 + minor * 100 + patch
    );
    assert_eq!(mmoe_version_number(), define("MMOE_VERSION_NUMBER"));
    assert_eq!(mmoe_abi_version(), define("MMOE_ABI_VERSION"));
    // SAFETY: a static NUL-terminated string.
    let text = unsafe { CStr::from_ptr(mmoe_version()) };
    assert_eq!(text.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

struct Engine(*mut mmoe_engine);
impl Drop for Engine {
    fn drop(&mut self) {
        mmoe_engine_free(self.0);
    }
}

fn open(path: &std::path::Path) -> Engine {
    let path = CString::new(path.to_str().unwrap()).unwrap();
    let mut engine = null_mut();
    assert_eq!(
        mmoe_engine_open(path.as_ptr(), null(), &mut engine),
        mmoe_status::MMOE_STATUS_OK,
        "{}",
        last_error()
    );
    Engine(engine)
}

#[test]
fn errors_through_the_c_abi() {
    let (_, _, packed) = small(DType::F16);
    let mut out = null_mut();
    // Opening: NULL path, missing file, corrupt file.
    assert_eq!(
        mmoe_engine_open(null(), null(), &mut out),
        mmoe_status::MMOE_STATUS_ARGUMENT
    );
    assert!(last_error().contains("path is NULL"));
    let missing = CString::new("/nonexistent/x.mmoe").unwrap();
    assert_eq!(
        mmoe_engine_open(missing.as_ptr(), null(), &mut out),
        mmoe_status::MMOE_STATUS_IO
    );
    assert!(last_error().contains("/nonexistent/x.mmoe"));
    assert!(out.is_null(), "nothing written on failure");
    let corrupt = packed.dir.path().join("corrupt.mmoe");
    let mut bytes = packed.bytes();
    bytes[200] ^= 1;
    std::fs::write(&corrupt, &bytes).unwrap();
    let corrupt_c = CString::new(corrupt.to_str().unwrap()).unwrap();
    assert_eq!(
        mmoe_engine_open(corrupt_c.as_ptr(), null(), &mut out),
        mmoe_status::MMOE_STATUS_CHECKSUM
    );

    let engine = open(&packed.path);
    let mut tasks = 0usize;
    assert_eq!(
        mmoe_engine_num_tasks(engine.0, &mut tasks),
        mmoe_status::MMOE_STATUS_OK
    );
    assert_eq!(tasks, 2);
    assert_eq!(
        mmoe_engine_num_tasks(null(), &mut tasks),
        mmoe_status::MMOE_STATUS_ARGUMENT
    );
    assert_eq!(
        mmoe_engine_num_tasks(engine.0, null_mut()),
        mmoe_status::MMOE_STATUS_ARGUMENT
    );
    let mut info = mmoe_input_info {
        kind: mmoe_input_kind::MMOE_INPUT_DENSE,
        scope: mmoe_scope::MMOE_SCOPE_REQUEST,
        dim: 0,
    };
    assert_eq!(
        mmoe_engine_input_info(engine.0, 9, &mut info),
        mmoe_status::MMOE_STATUS_ARGUMENT
    );
    assert!(last_error().contains("input index 9 out of range (4 inputs)"));
    assert_eq!(
        mmoe_engine_input_info(engine.0, 3, &mut info),
        mmoe_status::MMOE_STATUS_OK
    );
    assert_eq!(
        (info.kind, info.scope, info.dim),
        (
            mmoe_input_kind::MMOE_INPUT_SPARSE,
            mmoe_scope::MMOE_SCOPE_CANDIDATE,
            3
        )
    );
    let name = CString::new("as").unwrap();
    let mut index = 0u32;
    assert_eq!(
        mmoe_engine_input_index(engine.0, name.as_ptr(), &mut index),
        mmoe_status::MMOE_STATUS_OK
    );
    assert_eq!(index, 3);
    let unknown = CString::new("nope").unwrap();
    assert_eq!(
        mmoe_engine_input_index(engine.0, unknown.as_ptr(), &mut index),
        mmoe_status::MMOE_STATUS_REQUEST
    );
    assert!(last_error().contains("unknown input `nope`"));
    // Text queries report the full length and truncate with a NUL.
    let mut buf = [0u8; 4];
    let mut len = 0usize;
    assert_eq!(
        mmoe_engine_model_name(engine.0, buf.as_mut_ptr() as *mut _, buf.len(), &mut len),
        mmoe_status::MMOE_STATUS_OK
    );
    assert_eq!((len, &buf), (5, b"sma\0"));

    let mut session = null_mut();
    assert_eq!(
        mmoe_session_new(engine.0, &mut session),
        mmoe_status::MMOE_STATUS_OK
    );
    assert_eq!(
        mmoe_session_warm_up(session, 16),
        mmoe_status::MMOE_STATUS_OK,
        "{}",
        last_error()
    );
    assert_eq!(
        mmoe_session_warm_up(null_mut(), 16),
        mmoe_status::MMOE_STATUS_ARGUMENT
    );
    assert!(last_error().contains("session is NULL"), "{}", last_error());
    assert_eq!(
        mmoe_session_warm_up(session, 65537),
        mmoe_status::MMOE_STATUS_ARGUMENT
    );
    assert!(
        last_error().contains("above the warm-up limit of 65536 candidates"),
        "{}",
        last_error()
    );
    assert_eq!(
        mmoe_engine_set_warm_up(engine.0, 65537),
        mmoe_status::MMOE_STATUS_ARGUMENT
    );
    assert_eq!(
        mmoe_engine_set_warm_up(engine.0, 0),
        mmoe_status::MMOE_STATUS_OK
    );
    let n = 2;
    let u = [0.5f32, 1.0, -1.0, 2.0];
    let a = [0.1f32; 12];
    let ids = [1u64, 2, 3];
    let us_offsets = [0u32, 3];
    let as_offsets = [0u32, 1, 3];
    let mut features = [
        mmoe_feature {
            dense: u.as_ptr(),
            dense_len: 4,
            ..feature(0)
        },
        mmoe_feature {
            dense: a.as_ptr(),
            dense_len: 12,
            ..feature(1)
        },
        mmoe_feature {
            ids: ids.as_ptr(),
            ids_len: 3,
            offsets: us_offsets.as_ptr(),
            offsets_len: 2,
            ..feature(2)
        },
        mmoe_feature {
            ids: ids.as_ptr(),
            ids_len: 3,
            offsets: as_offsets.as_ptr(),
            offsets_len: 3,
            ..feature(3)
        },
    ];
    let mut logits = [7.0f32; 4];
    let score = |features: &[mmoe_feature], logits: &mut [f32]| {
        mmoe_session_score(
            session,
            n,
            features.as_ptr(),
            features.len(),
            logits.as_mut_ptr(),
            logits.len(),
            null_mut(),
            0,
        )
    };
    assert_eq!(
        score(&features, &mut logits),
        mmoe_status::MMOE_STATUS_OK,
        "{}",
        last_error()
    );
    let good = logits;
    // Wrong output length, NULL data with a length, a missing input, a
    // duplicated input, CSR offsets past the ids: refused, outputs untouched.
    let mut short = [7.0f32; 3];
    assert_eq!(
        score(&features, &mut short),
        mmoe_status::MMOE_STATUS_ARGUMENT
    );
    assert!(
        last_error().contains("logits output holds 3 floats, expected 2 candidates × 2 tasks = 4")
    );
    assert_eq!(short, [7.0; 3]);
    let mut bad = features;
    bad[1].dense = null();
    assert_eq!(score(&bad, &mut logits), mmoe_status::MMOE_STATUS_ARGUMENT);
    assert!(last_error().contains("features[1].dense is NULL with length 12"));
    assert_eq!(
        score(&features[..3], &mut logits),
        mmoe_status::MMOE_STATUS_REQUEST
    );
    assert!(last_error().contains("input `as` is not set"));
    let mut twice = features;
    twice[3].input = 2;
    assert_eq!(score(&twice, &mut logits), mmoe_status::MMOE_STATUS_REQUEST);
    assert!(last_error().contains("input 2 is given twice"));
    features[3].offsets_len = 3;
    let past = [0u32, 1, 9];
    features[3].offsets = past.as_ptr();
    let mut untouched = [7.0f32; 4];
    assert_eq!(
        score(&features, &mut untouched),
        mmoe_status::MMOE_STATUS_REQUEST
    );
    assert!(last_error().contains("input `as`: last offset is 9 but there are 3 ids"));
    assert_eq!(untouched, [7.0; 4]);
    let mut nan = u;
    nan[0] = f32::NAN;
    features[3].offsets = as_offsets.as_ptr();
    features[0].dense = nan.as_ptr();
    assert_eq!(
        score(&features, &mut logits),
        mmoe_status::MMOE_STATUS_REQUEST
    );
    assert!(last_error().contains("input `u` (request scope) element 0: value NaN"));
    features[0].dense = u.as_ptr();
    assert_eq!(score(&features, &mut logits), mmoe_status::MMOE_STATUS_OK);
    assert_eq!(logits, good);
    assert_eq!(
        mmoe_session_score(null_mut(), 0, null(), 0, null_mut(), 0, null_mut(), 0),
        mmoe_status::MMOE_STATUS_ARGUMENT
    );
    mmoe_session_free(session);
    mmoe_session_free(null_mut());
    mmoe_engine_free(null_mut());
    // SAFETY: static strings.
    assert_eq!(
        unsafe { CStr::from_ptr(mmoe_status_str(mmoe_status::MMOE_STATUS_CHECKSUM as u32)) }
            .to_str()
            .unwrap(),
        "checksum mismatch"
    );
}

/// What a careless or stale C caller can pass (an enum value out of range, a
/// `-1` count, a length that wrapped, outputs that alias inputs) is an error
/// with a message, never undefined behaviour or an abort of the host.
/// The engine tells where its model scores: CPU for a CPU open; for AUTO,
/// CUDA where a GPU took the model, else the CPU with the reason in the note
/// (this machine has no GPU unless the check runs on one).
#[test]
fn the_engine_tells_which_device_serves() {
    let (_, _, packed) = small(DType::F16);
    let path = CString::new(packed.path.to_str().unwrap()).unwrap();
    let device_of = |engine: &Engine| {
        let mut device = mmoe_device::MMOE_DEVICE_AUTO;
        let mut ordinal = 7u32;
        assert_eq!(
            mmoe_engine_device(engine.0, &mut device, &mut ordinal),
            mmoe_status::MMOE_STATUS_OK
        );
        let mut len = 0usize;
        assert_eq!(
            mmoe_engine_device_note(engine.0, null_mut(), 0, &mut len),
            mmoe_status::MMOE_STATUS_OK
        );
        let mut buf = vec![0u8; len + 1];
        assert_eq!(
            mmoe_engine_device_note(engine.0, buf.as_mut_ptr() as *mut _, buf.len(), null_mut()),
            mmoe_status::MMOE_STATUS_OK
        );
        let note = CStr::from_bytes_until_nul(&buf)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        (device, ordinal, note)
    };

    let cpu = open(&packed.path);
    assert_eq!(
        device_of(&cpu),
        (mmoe_device::MMOE_DEVICE_CPU, 0, "cpu".to_owned())
    );
    // The ordinal is optional; the device is not.
    let mut device = mmoe_device::MMOE_DEVICE_AUTO;
    assert_eq!(
        mmoe_engine_device(cpu.0, &mut device, null_mut()),
        mmoe_status::MMOE_STATUS_OK
    );
    assert_eq!(device, mmoe_device::MMOE_DEVICE_CPU);
    assert_eq!(
        mmoe_engine_device(cpu.0, null_mut(), null_mut()),
        mmoe_status::MMOE_STATUS_ARGUMENT
    );
    assert!(last_error().contains("out_device is NULL"));

    let mut options = mmoe_open_options_default();
    options.device = mmoe_device::MMOE_DEVICE_AUTO;
    let mut raw = null_mut();
    assert_eq!(
        mmoe_engine_open(path.as_ptr(), &options, &mut raw),
        mmoe_status::MMOE_STATUS_OK,
        "{}",
        last_error()
    );
    let auto = Engine(raw);
    let (device, ordinal, note) = device_of(&auto);
    if note.starts_with("cuda:0") {
        assert_eq!((device, ordinal), (mmoe_device::MMOE_DEVICE_CUDA, 0));
    } else {
        assert_eq!((device, ordinal), (mmoe_device::MMOE_DEVICE_CPU, 0));
        assert!(note.starts_with("cpu (auto: "), "{note}");
    }
    // A reload opens the model again with the engine's options: the same answer.
    assert_eq!(
        mmoe_engine_reload(auto.0, path.as_ptr()),
        mmoe_status::MMOE_STATUS_OK
    );
    assert_eq!(device_of(&auto).0, device);
}

#[test]
fn hostile_arguments_are_errors() {
    let (_, _, packed) = small(DType::F16);
    let path = CString::new(packed.path.to_str().unwrap()).unwrap();
    // Options as C fills them: device, ordinal, compute mode, precision,
    // threads, verify (a plain array, so that no Rust enum holds a bad value).
    let open_with = |raw: [u32; 6]| {
        let mut engine = null_mut();
        let status = mmoe_engine_open(
            path.as_ptr(),
            raw.as_ptr() as *const mmoe_open_options,
            &mut engine,
        );
        mmoe_engine_free(engine);
        (status, last_error())
    };
    let (status, message) = open_with([7, 0, 0, 0, 1, 0]);
    assert_eq!(status, mmoe_status::MMOE_STATUS_ARGUMENT);
    assert!(
        message.contains("options.device 7 is not an mmoe_device"),
        "{message}"
    );
    let (status, message) = open_with([0, 0, 9, 0, 1, 0]);
    assert_eq!(status, mmoe_status::MMOE_STATUS_ARGUMENT);
    assert!(message.contains("options.compute_mode 9"), "{message}");
    let (status, message) = open_with([0, 0, 0, 5, 1, 0]);
    assert_eq!(status, mmoe_status::MMOE_STATUS_ARGUMENT);
    assert!(message.contains("options.gpu_precision 5"), "{message}");
    let (status, message) = open_with([0, 0, 0, 0, u32::MAX, 0]);
    assert_eq!(status, mmoe_status::MMOE_STATUS_ARGUMENT);
    assert!(
        message.contains("options.threads 4294967295 is above the limit of 256"),
        "{message}"
    );
    assert_eq!(
        open_with([0, 0, 1, 1, 256, 1]).0,
        mmoe_status::MMOE_STATUS_OK
    );
    // SAFETY: static strings.
    let status_text = |status| {
        unsafe { CStr::from_ptr(mmoe_status_str(status)) }
            .to_str()
            .unwrap()
    };
    assert_eq!(status_text(42), "unknown status");
    assert_eq!(status_text(u32::MAX), "unknown status");

    // A text query with a NULL buffer of nonzero length writes nothing.
    let engine = open(&packed.path);
    let mut len = 99usize;
    assert_eq!(
        mmoe_engine_model_name(engine.0, null_mut(), 8, &mut len),
        mmoe_status::MMOE_STATUS_ARGUMENT
    );
    assert_eq!(len, 99, "out_len written by a failed call");

    let mut session = null_mut();
    assert_eq!(
        mmoe_session_new(engine.0, &mut session),
        mmoe_status::MMOE_STATUS_OK
    );
    let u = [0.5f32, 1.0, -1.0, 2.0];
    let mut a = [0.1f32; 16];
    // Every pointer into `a` from one raw base, as C would hold them.
    let a_base = a.as_mut_ptr();
    let ids = [1u64, 2, 3];
    let us_offsets = [0u32, 3];
    let as_offsets = [0u32, 1, 3];
    let features = [
        mmoe_feature {
            dense: u.as_ptr(),
            dense_len: 4,
            ..feature(0)
        },
        mmoe_feature {
            dense: a_base,
            dense_len: 12,
            ..feature(1)
        },
        mmoe_feature {
            ids: ids.as_ptr(),
            ids_len: 3,
            offsets: us_offsets.as_ptr(),
            offsets_len: 2,
            ..feature(2)
        },
        mmoe_feature {
            ids: ids.as_ptr(),
            ids_len: 3,
            offsets: as_offsets.as_ptr(),
            offsets_len: 3,
            ..feature(3)
        },
    ];
    let score = |candidates: usize,
                 features: &[mmoe_feature],
                 logits: (*mut f32, usize),
                 probabilities: (*mut f32, usize)| {
        let status = mmoe_session_score(
            session,
            candidates,
            features.as_ptr(),
            features.len(),
            logits.0,
            logits.1,
            probabilities.0,
            probabilities.1,
        );
        (status, last_error())
    };
    let mut logits = [7.0f32; 4];
    let mut probabilities = [7.0f32; 4];
    let out = (logits.as_mut_ptr(), 4);
    let none = (null_mut(), 0);
    assert_eq!(
        score(2, &features, out, none).0,
        mmoe_status::MMOE_STATUS_OK
    );

    // An input index of -1 (4294967295 as a uint32_t).
    let mut bad = features;
    bad[0].input = u32::MAX;
    let (status, message) = score(2, &bad, out, none);
    assert_eq!(status, mmoe_status::MMOE_STATUS_REQUEST);
    assert!(
        message.contains("features[0].input is 4294967295, but model `small` has 4 inputs"),
        "{message}"
    );
    // A length of `0 - 1`.
    let mut bad = features;
    bad[2].ids_len = usize::MAX;
    let (status, message) = score(2, &bad, out, none);
    assert_eq!(status, mmoe_status::MMOE_STATUS_ARGUMENT);
    assert!(
        message
            .contains("features[2].ids has length 18446744073709551615, more than memory can hold"),
        "{message}"
    );
    // A candidate count of -1, with no output to size it.
    let (status, message) = score(usize::MAX, &features, none, none);
    assert_eq!(status, mmoe_status::MMOE_STATUS_REQUEST);
    assert!(
        message.contains("above the limit of 16777216 per request"),
        "{message}"
    );
    // Outputs that alias each other or an input.
    let (status, message) = score(2, &features, out, out);
    assert_eq!(status, mmoe_status::MMOE_STATUS_ARGUMENT);
    assert!(
        message.contains("logits and probabilities overlap"),
        "{message}"
    );
    // SAFETY: in bounds of `a` (16 floats).
    let inside_a = (unsafe { a_base.add(2) }, 4);
    let (status, message) = score(2, &features, out, inside_a);
    assert_eq!(status, mmoe_status::MMOE_STATUS_ARGUMENT);
    assert!(
        message.contains("features[1].dense overlaps probabilities"),
        "{message}"
    );
    // Right beside an input is not inside it.
    // SAFETY: in bounds of `a` (16 floats).
    let after_a = (unsafe { a_base.add(12) }, 4);
    assert_eq!(
        score(2, &features, out, after_a).0,
        mmoe_status::MMOE_STATUS_OK
    );
    // An empty array pointing inside an output shares no byte with it.
    let mut empty_inside = features;
    empty_inside[0].ids = out.0 as *const u64;
    assert_eq!(
        score(2, &empty_inside, out, none).0,
        mmoe_status::MMOE_STATUS_OK
    );
    let probabilities_out = (probabilities.as_mut_ptr(), 4);
    assert_eq!(
        score(2, &features, out, probabilities_out).0,
        mmoe_status::MMOE_STATUS_OK
    );
    mmoe_session_free(session);
}
