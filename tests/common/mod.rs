//! Helpers shared by the integration tests: small models of every expert
//! type, packed into a temporary directory.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use mmoe::format::writer::{self, MemorySource, TensorSource};
use mmoe::request::OwnedRequest;
use mmoe::{Config, DType, Model, OpenOptions, Scores, Session};

/// A small model with every expert type and a gate reading a subset.
pub const SMALL_CONFIG: &str = include_str!("small_config.json");

pub fn config(json: &str) -> Config {
    Config::parse(json).expect("test config is valid")
}

pub struct Packed {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Packed {
    pub fn open(&self) -> Arc<Model> {
        Model::open(&self.path, &OpenOptions::default()).expect("packed model opens")
    }
    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("read packed file")
    }
}

pub fn pack(config: &Config, source: &MemorySource, dtype: DType) -> Packed {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.mmoe");
    writer::pack(config, source, dtype, &path, &mut |_, _| {}).expect("pack");
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

/// Scores `request` on `session`, returning the logits (panics on error).
pub fn session_logits(session: &mut Session, request: &OwnedRequest) -> Vec<f32> {
    let mut out = vec![0.0; request.candidates * session.model().num_tasks()];
    session
        .score(
            &request.as_request(),
            &mut Scores {
                logits: Some(&mut out),
                probabilities: None,
            },
        )
        .expect("scoring succeeds");
    out
}
