//! Drives `mmoe_session_score` through the C ABI with requests decoded from
//! the fuzz input: any candidate count (including huge ones), inputs out of
//! range or given twice, dense and sparse mixed up, arbitrary CSR offsets and
//! lengths, NaN and infinite values, and output buffers of the right or a
//! wrong length. Every call must return a status; a panic, an abort or an
//! out-of-bounds access (ASan) is a finding. Scores must be written only on
//! success.
#![no_main]

use std::ffi::CString;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mmoe::ffi::{
    mmoe_engine, mmoe_engine_open, mmoe_session_free, mmoe_session_new, mmoe_session_score,
    mmoe_feature, mmoe_session, mmoe_status,
};

/// The engine (a small model of every expert type), opened once.
struct Fixture {
    engine: usize,
    inputs: u32,
    tasks: usize,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let config =
            mmoe::Config::parse(include_str!("../../tests/common/small_config.json")).expect("config");
        let source = mmoe::demo::synthetic_tensors(&config, 3).expect("tensors");
        let path = std::env::temp_dir().join(format!("mmoe-fuzz-c-abi-{}.mmoe", std::process::id()));
        mmoe::format::writer::pack(&config, &source, mmoe::DType::F16, &path, &mut |_, _| {})
            .expect("pack");
        let c_path = CString::new(path.to_str().expect("utf-8 path")).expect("path");
        let mut engine: *mut mmoe_engine = std::ptr::null_mut();
        let status = mmoe_engine_open(c_path.as_ptr(), std::ptr::null(), &mut engine);
        assert_eq!(status, mmoe_status::MMOE_STATUS_OK, "open the fixture model");
        // The engine keeps the file mapped; its name is not needed any more,
        // and a fuzz run is not to leave a model in the temp directory.
        std::fs::remove_file(&path).expect("remove the fixture model's file");
        Fixture {
            engine: engine as usize,
            inputs: config.inputs.len() as u32,
            tasks: config.tasks.len(),
        }
    })
}

/// Reads the fuzz input front to back; zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn f32(&mut self) -> f32 {
        match self.u8() % 8 {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => f32::from_bits(self.u32()),
            _ => (self.u16() as f32 - 32768.0) / 256.0,
        }
    }
}

/// One feature's arrays, owned so the C struct can borrow them.
#[derive(Default)]
struct Arrays {
    dense: Vec<f32>,
    ids: Vec<u64>,
    offsets: Vec<u32>,
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let mut bytes = Bytes(data);
    let candidates = match bytes.u8() {
        255 => bytes.u64() as usize,
        254 => usize::MAX,
        n => (n % 70) as usize,
    };
    let num_features = (bytes.u8() % 16) as usize;
    let mut arrays: Vec<(u32, Arrays)> = Vec::with_capacity(num_features);
    for _ in 0..num_features {
        let input = bytes.u32() % (fixture.inputs + 2);
        let mut a = Arrays::default();
        if bytes.u8() % 2 == 0 {
            let len = bytes.u16() as usize % 512;
            a.dense = (0..len).map(|_| bytes.f32()).collect();
        } else {
            let offsets = bytes.u8() as usize % 80;
            // Mostly ascending offsets from 0, sometimes anything at all.
            let wild = bytes.u8() % 4 == 0;
            let mut at = 0u32;
            for _ in 0..offsets {
                at = if wild { bytes.u32() } else { at + (bytes.u8() % 5) as u32 };
                a.offsets.push(at);
            }
            let ids = bytes.u16() as usize % 400;
            a.ids = (0..ids).map(|_| bytes.u64()).collect();
        }
        arrays.push((input, a));
    }
    // Each pointer/length pair: honest, a shorter length, or NULL with a length.
    let mut features: Vec<mmoe_feature> = Vec::with_capacity(arrays.len());
    for (input, a) in &arrays {
        let mode = bytes.u8();
        let len = |n: usize| if mode % 7 == 1 { n.saturating_sub(1) } else { n };
        let ptr = |p: *const u8, n: usize| if mode % 11 == 2 && n > 0 { std::ptr::null() } else { p };
        features.push(mmoe_feature {
            input: *input,
            dense: ptr(a.dense.as_ptr() as *const u8, a.dense.len()) as *const f32,
            dense_len: len(a.dense.len()),
            ids: ptr(a.ids.as_ptr() as *const u8, a.ids.len()) as *const u64,
            ids_len: len(a.ids.len()),
            offsets: a.offsets.as_ptr(),
            offsets_len: a.offsets.len(),
        });
    }
    let want = candidates.saturating_mul(fixture.tasks);
    let out_len = match bytes.u8() % 4 {
        0 => want.saturating_add(1),
        1 => want.saturating_sub(1),
        _ => want,
    };
    // Never allocate what a huge candidate count asks for: a short buffer
    // with its true length, which the engine must refuse before writing.
    let capacity = out_len.min(1 << 16);
    let mut logits = vec![f32::from_bits(0x7fc0_1234); capacity];
    let with_probabilities = bytes.u8() % 2 == 0;
    let mut probabilities = vec![f32::from_bits(0x7fc0_1234); if with_probabilities { capacity } else { 0 }];

    let mut session: *mut mmoe_session = std::ptr::null_mut();
    let status = mmoe_session_new(fixture.engine as *const mmoe_engine, &mut session);
    assert_eq!(status, mmoe_status::MMOE_STATUS_OK);
    // Buffers are passed with their true lengths (a false one would break
    // the caller's side of the contract, not ours).
    let status = mmoe_session_score(
        session,
        candidates,
        features.as_ptr(),
        features.len(),
        logits.as_mut_ptr(),
        capacity,
        if with_probabilities { probabilities.as_mut_ptr() } else { std::ptr::null_mut() },
        if with_probabilities { capacity } else { 0 },
    );
    static TRACE: OnceLock<bool> = OnceLock::new();
    if *TRACE.get_or_init(|| std::env::var_os("MMOE_FUZZ_TRACE").is_some()) {
        eprintln!("{candidates} candidates, {} features: {status:?}", features.len());
    }
    if status == mmoe_status::MMOE_STATUS_OK {
        assert_eq!(capacity, want, "success only with the exact output length");
        // Huge finite inputs may overflow to inf or NaN, as in PyTorch; but
        // every score is written.
        assert!(logits.iter().all(|v| v.to_bits() != 0x7fc0_1234), "every logit written");
    } else {
        assert!(logits.iter().all(|v| v.to_bits() == 0x7fc0_1234), "nothing written on failure");
    }
    mmoe_session_free(session);
});
