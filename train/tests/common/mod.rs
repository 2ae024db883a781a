//! Small random impression tables for the trainer's tests, written with the
//! same Parquet writer the CLI uses.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use mmoe::config::{Config, Scope};
use mmoe::demo::Rng;
use mmoe_train::dataset::table::{schema, Chunk, FeatureColumn, TableWriter};

pub fn config(name: &str) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../experiments/configs")
        .join(format!("{name}.json"));
    Config::parse(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// `requests` requests of 1–12 candidates over `days` days: request-level
/// values shared by the request's rows, a few missing values where allowed,
/// large ids (read mod rows), labels that depend on the features.
pub fn random_table(config: &Config, requests: usize, days: i32, seed: u64, dir: &Path) -> PathBuf {
    let mut rng = Rng::new(seed);
    let mut chunk = Chunk::empty(config, vec!["related_pins".into(), "search".into()]);
    for request in 0..requests {
        let n = 1 + rng.below(12) as usize;
        let view = rng.below(2) as u16;
        // Request-level values, drawn once.
        let mut shared: Vec<(Vec<f32>, Vec<u64>)> = Vec::new();
        for input in &config.inputs {
            let dense: Vec<f32> = (0..input.dim).map(|_| 3.0 * rng.normal() + 1.0).collect();
            let ids: Vec<u64> = (0..rng.below(4)).map(|_| rng.next_u64()).collect();
            shared.push((dense, ids));
        }
        for _ in 0..n {
            chunk.request_id.push(request as u64 * 7 + 3);
            chunk.day.push((request as i32 * days) / requests as i32);
            chunk.view.push(view);
            let mut signal = 0.0;
            for ((input, (_, column)), (dense, ids)) in config
                .inputs
                .iter()
                .zip(chunk.features.iter_mut())
                .zip(&shared)
            {
                let request_level = input.scope == Scope::Request;
                match column {
                    FeatureColumn::Dense { values, .. } => {
                        for (i, v) in dense.iter().enumerate() {
                            let mut x = if request_level {
                                *v
                            } else {
                                2.0 * rng.normal() - 0.5
                            };
                            if input.missing_is_zero() && rng.below(20) == 0 {
                                x = f32::NAN;
                            } else if i == 0 {
                                signal += x.clamp(-3.0, 3.0);
                            }
                            values.push(x);
                        }
                    }
                    FeatureColumn::Sparse { offsets, ids: all } => {
                        if request_level {
                            all.extend_from_slice(ids);
                        } else {
                            for _ in 0..rng.below(4) {
                                let id = rng.below(50);
                                signal += if id.is_multiple_of(2) { 0.5 } else { -0.5 };
                                all.push(id);
                            }
                        }
                        offsets.push(all.len() as u32);
                    }
                }
            }
            for (t, (_, labels)) in chunk.labels.iter_mut().enumerate() {
                let p = 1.0 / (1.0 + (-(signal * (1.0 - 0.3 * t as f32) - 1.5)).exp());
                labels.push(u8::from(rng.unit() < p));
            }
        }
    }
    let path = dir.join("table.parquet");
    let mut writer = TableWriter::create(&path, schema(config, true, &[])).unwrap();
    writer.write(&chunk).unwrap();
    writer.finish().unwrap();
    path
}

/// Saves `net` into `dir` and packs it into `dir/model.mmoe`.
pub fn pack(net: &mmoe_train::network::Network, dir: &Path, dtype: mmoe::DType) -> PathBuf {
    net.save(dir).unwrap();
    let source =
        mmoe::format::safetensors_source::SafetensorsSource::open(&dir.join("model.safetensors"))
            .unwrap();
    let packed = dir.join("model.mmoe");
    mmoe::format::writer::pack(&net.config, &source, dtype, &packed, &mut |_, _| {}).unwrap();
    packed
}

/// The engine's logits `[task][row]` for the rows of `table` whose day
/// passes `keep`, scored as `mmoe score-dataset` scores them.
pub fn engine_logits(packed: &Path, table: &Path, keep: &dyn Fn(i32) -> bool) -> Vec<Vec<f32>> {
    let model = mmoe::Model::open(packed, &mmoe::OpenOptions::default()).unwrap();
    let mut reader =
        mmoe_train::dataset::table::TableReader::open(table, model.config(), 50).unwrap();
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); model.num_tasks()];
    mmoe_train::dataset::score::score_table(
        &model,
        &mut reader,
        2,
        &mut |chunk, logits| {
            for (t, column) in logits.into_iter().enumerate() {
                for (r, v) in column.into_iter().enumerate() {
                    if keep(chunk.day[r]) {
                        out[t].push(v.expect("every row scores"));
                    }
                }
            }
            Ok(())
        },
        &mut |_| {},
    )
    .unwrap();
    out
}
