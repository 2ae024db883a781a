//! Helpers shared by the integration tests: small models of every expert
//! type, packed into a temporary directory.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use mmoe::format::writer::{self, MemorySource, TensorSource};
use mmoe::request::OwnedRequest;
use mmoe::{Config, DType, Model, OpenOptions, Scores, Session};

/// Input `input` for the C ABI, with no array set.
pub fn c_feature(input: u32) -> mmoe::ffi::mmoe_feature {
    mmoe::ffi::mmoe_feature {
        input,
        dense: std::ptr::null(),
        dense_len: 0,
        ids: std::ptr::null(),
        ids_len: 0,
        offsets: std::ptr::null(),
        offsets_len: 0,
    }
}

/// A small model with every expert type and a gate reading a subset.
pub const SMALL_CONFIG: &str = include_str!("small_config.json");

pub fn config(json: &str) -> Config {
    Config::parse(json).expect("test config is valid")
}

pub struct Packed {
    pub dir: test_support::TempDir,
    pub path: PathBuf,
}

impl Packed {
    pub fn open(&self) -> Arc<Model> {
        Model::open(&self.path, &OpenOptions::default()).expect("packed model opens")
    }
    /// Opened in the CPU's bf16 mode (exact where the CPU lacks AVX512-BF16).
    pub fn open_bf16(&self) -> Arc<Model> {
        let options = OpenOptions {
            cpu_mode: mmoe::CpuMode::Bf16,
            // The kernel under test, on any CPU that has it.
            bf16_even_if_slower: true,
            ..OpenOptions::default()
        };
        Model::open(&self.path, &options).expect("packed model opens in bf16 mode")
    }
    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("read packed file")
    }
}

pub fn pack(config: &Config, source: &MemorySource, dtype: DType) -> Packed {
    pack_for_layout(config, source, dtype, mmoe::format::LAYOUT_VERSION)
}

/// [`pack`] in a given tensor layout version.
pub fn pack_for_layout(
    config: &Config,
    source: &MemorySource,
    dtype: DType,
    layout_version: u32,
) -> Packed {
    let dir = test_support::tempdir().expect("temp dir");
    let path = dir.path().join("model.mmoe");
    writer::pack_for_layout(config, source, dtype, &path, &mut |_, _| {}, layout_version)
        .expect("pack");
    Packed { dir, path }
}

/// The small model with synthetic weights.
pub fn small(dtype: DType) -> (Config, MemorySource, Packed) {
    let config = config(SMALL_CONFIG);
    let source = mmoe::demo::synthetic_tensors(&config, 3).expect("synthetic tensors");
    let packed = pack(&config, &source, dtype);
    (config, source, packed)
}

/// Writes `tensors` as a safetensors file with each tensor in the given dtype.
pub fn write_safetensors(
    path: &std::path::Path,
    source: &MemorySource,
    dtype_of: impl Fn(&str) -> &'static str,
) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for name in source.names() {
        let shape = source.shape(&name).unwrap();
        let mut values = vec![0.0; shape.iter().product()];
        source.read(&name, 0, &mut values).unwrap();
        let dtype = dtype_of(&name);
        let start = data.len();
        for v in values {
            match dtype {
                "F32" => data.extend_from_slice(&v.to_le_bytes()),
                "F16" => data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                "BF16" => data.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                _ => unreachable!(),
            }
        }
        header.insert(
            name,
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend(text);
    file.extend(data);
    std::fs::write(path, file).unwrap();
}

/// Scores `request` through `score` into logits for `tasks` tasks: what
/// `score` returned, and the logits (panics on error).
fn scored<T>(
    request: &OwnedRequest,
    tasks: usize,
    score: impl FnOnce(&mut Scores<'_>) -> mmoe::Result<T>,
) -> (T, Vec<f32>) {
    let mut out = vec![0.0; request.candidates * tasks];
    let value = score(&mut Scores {
        logits: Some(&mut out),
        probabilities: None,
    })
    .expect("scoring succeeds");
    (value, out)
}

/// Scores `request` on `session`, returning the logits (panics on error).
pub fn session_logits(session: &mut Session, request: &OwnedRequest) -> Vec<f32> {
    let tasks = session.model().num_tasks();
    scored(request, tasks, |scores| {
        session.score(&request.as_request(), scores)
    })
    .1
}

/// Scores `request` on an engine session: the model that scored, and the
/// logits (panics on error).
pub fn engine_session_logits(
    session: &mut mmoe::EngineSession,
    request: &OwnedRequest,
) -> (Arc<mmoe::Model>, Vec<f32>) {
    let tasks = session.engine().model().num_tasks();
    scored(request, tasks, |scores| {
        session.score(&request.as_request(), scores)
    })
}

/// What [`reload_under_traffic`] saw.
pub struct ReloadRun {
    pub engine: Arc<mmoe::Engine>,
    pub calls: usize,
    pub seen_a: usize,
    pub seen_b: usize,
    /// The error of the reload to a corrupt copy of A.
    pub corrupt_error: mmoe::Error,
}

/// Two models of the small config (weight seeds 1 and 2); 4 threads score a
/// request of `candidates` through one engine opened with `options` while
/// it reloads between them `reloads` times, `pause` apart (each reload
/// warmed up for `warm_up` candidates: `Engine::set_warm_up`), then tries a
/// corrupt copy of A. Every call must succeed with exactly one model's
/// scores (panics otherwise); the failed reload must leave the model
/// serving. Returns the counts for the caller's checks.
pub fn reload_under_traffic(
    options: OpenOptions,
    candidates: usize,
    reloads: usize,
    pause: std::time::Duration,
    warm_up: usize,
) -> ReloadRun {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let config = self::config(SMALL_CONFIG);
    let [a, b] = [1, 2].map(|seed| {
        pack(
            &config,
            &mmoe::demo::synthetic_tensors(&config, seed).expect("tensors"),
            DType::F16,
        )
    });
    let request = mmoe::demo::synthetic_request(&config, candidates, 3);
    let tasks = config.tasks.len();
    let score = |session: &mut mmoe::EngineSession, out: &mut [f32]| {
        session.score(
            &request.as_request(),
            &mut Scores {
                logits: Some(out),
                probabilities: None,
            },
        )
    };
    let expected: Vec<Vec<f32>> = [&a, &b]
        .iter()
        .map(|p| {
            let engine = Arc::new(mmoe::Engine::open(&p.path, options.clone()).expect("open"));
            let mut out = vec![0.0; candidates * tasks];
            score(&mut engine.session(), &mut out).expect("score");
            out
        })
        .collect();
    assert_ne!(expected[0], expected[1]);
    let engine = Arc::new(mmoe::Engine::open(&a.path, options).expect("open A"));
    engine.set_warm_up(warm_up).expect("warm-up size");
    let stop = AtomicBool::new(false);
    let (calls, seen_a, seen_b) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let corrupt_error = std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let mut session = engine.session();
                let mut out = vec![0.0; candidates * tasks];
                while !stop.load(Ordering::Relaxed) {
                    let model =
                        score(&mut session, &mut out).expect("no call fails during reloads");
                    calls.fetch_add(1, Ordering::Relaxed);
                    if out == expected[0] {
                        seen_a.fetch_add(1, Ordering::Relaxed);
                    } else if out == expected[1] {
                        seen_b.fetch_add(1, Ordering::Relaxed);
                    } else {
                        panic!("scores of neither model (model {:x})", model.content_hash());
                    }
                }
            });
        }
        for i in 0..reloads {
            engine
                .reload(if i % 2 == 0 { &b.path } else { &a.path })
                .expect("reload");
            std::thread::sleep(pause);
        }
        // A failed reload (a corrupt file) leaves the current model serving.
        let corrupt = a.dir.path().join("corrupt.mmoe");
        let mut bytes = a.bytes();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&corrupt, bytes).expect("write");
        let before = engine.model().content_hash();
        let err = engine
            .reload(&corrupt)
            .expect_err("a corrupt file is refused");
        assert_eq!(engine.model().content_hash(), before);
        std::thread::sleep(pause * 4);
        stop.store(true, Ordering::Relaxed);
        err
    });
    ReloadRun {
        engine,
        calls: calls.into_inner(),
        seen_a: seen_a.into_inner(),
        seen_b: seen_b.into_inner(),
        corrupt_error,
    }
}
