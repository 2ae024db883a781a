//! Opening is zero copy: a 1 GiB model opens about as fast as a 1 MiB one,
//! and opening it does not grow resident memory by the file size.

use std::time::Instant;

use mmoe::format::writer::{self, MemorySource, TensorSource};
use mmoe::{Config, DType, Model, OpenOptions, Request, Scores, Session};

/// The big embedding table is generated on the fly, so the test never holds
/// it in memory.
struct BigTable {
    small: MemorySource,
    table: String,
    shape: Vec<usize>,
}

impl TensorSource for BigTable {
    fn names(&self) -> Vec<String> {
        let mut names = self.small.names();
        names.push(self.table.clone());
        names
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if name == self.table {
            Some(self.shape.clone())
        } else {
            self.small.shape(name)
        }
    }
    fn read(&self, name: &str, start: usize, out: &mut [f32]) -> mmoe::Result<()> {
        if name != self.table {
            return self.small.read(name, start, out);
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = (((start + i) % 251) as f32 - 125.0) / 256.0;
        }
        Ok(())
    }
}

fn model_with_table(dir: &std::path::Path, rows: usize) -> std::path::PathBuf {
    let json = format!(
        r#"{{"name": "big", "expert_dim": 8,
        "inputs": [{{"name": "x", "kind": "dense", "scope": "candidate", "dim": 8}},
                   {{"name": "id", "kind": "sparse", "scope": "candidate", "rows": {rows}, "dim": 16, "pooling": "sum"}}],
        "experts": [{{"name": "m", "type": "mlp", "hidden": [8]}}],
        "tasks": [{{"name": "click", "tower": [4]}}]}}"#
    );
    let config = Config::parse(&json).unwrap();
    let mut small = MemorySource::new();
    // Weights of everything but the table, from a model with a tiny table.
    let tiny = Config::parse(&json.replace(&format!("\"rows\": {rows}"), "\"rows\": 1")).unwrap();
    let tiny_tensors = mmoe::demo::synthetic_tensors(&tiny, 1).unwrap();
    for name in tiny_tensors.names() {
        if name != "inputs.id.embedding" {
            let shape = tiny_tensors.shape(&name).unwrap();
            let mut values = vec![0.0; shape.iter().product()];
            tiny_tensors.read(&name, 0, &mut values).unwrap();
            small.insert(name, shape, values);
        }
    }
    let source = BigTable {
        small,
        table: "inputs.id.embedding".into(),
        shape: vec![rows, 16],
    };
    let path = dir.join(format!("rows{rows}.mmoe"));
    writer::pack(&config, &source, DType::F16, &path, &mut |_, _| {}).unwrap();
    path
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn best_open_time(path: &std::path::Path) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            let model = Model::open(path, &OpenOptions::default()).unwrap();
            let t = start.elapsed().as_secs_f64();
            drop(model);
            t
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn one_gib_model_opens_like_a_small_one_without_growing_memory() {
    let dir = test_support::tempdir().unwrap();
    let small = model_with_table(dir.path(), 1 << 15); // 1 MiB table
    let big = model_with_table(dir.path(), 1 << 25); // 1 GiB table
    let big_len = std::fs::metadata(&big).unwrap().len();
    assert!(big_len >= 1 << 30, "the big model is {big_len} bytes");

    let before = resident_bytes();
    let model = Model::open(&big, &OpenOptions::default()).unwrap();
    // Score one request through the big table: only the rows read are paged in.
    let x = vec![0.5f32; 8];
    let ids = [5u64, (1 << 25) - 1];
    let offsets = [0u32, 2];
    let mut request = Request::new(1);
    request.set_dense(0, &x).set_sparse(1, &ids, &offsets);
    let mut logits = [0.0f32];
    Session::new(model.clone())
        .score(
            &request,
            &mut Scores {
                logits: Some(&mut logits),
                probabilities: None,
            },
        )
        .unwrap();
    let grown = resident_bytes().saturating_sub(before);
    assert!(logits[0].is_finite());
    assert!(
        grown < 32 << 20,
        "opening and scoring a {big_len}-byte model grew resident memory by {grown} bytes"
    );
    drop(model);

    let (t_small, t_big) = (best_open_time(&small), best_open_time(&big));
    println!(
        "open: 1 MiB table {:.1} µs, 1 GiB table {:.1} µs; resident growth {:.1} MiB",
        t_small * 1e6,
        t_big * 1e6,
        grown as f64 / (1 << 20) as f64
    );
    // Generous bound: both are a header read and a few syscalls; a copy of
    // 1 GiB would take hundreds of milliseconds.
    assert!(
        t_big < t_small * 20.0 + 0.005,
        "1 GiB open took {t_big} s vs {t_small} s"
    );
}
