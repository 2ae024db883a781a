//! Training behaviour: determinism by seed, teacher logits aligned with the
//! training rows, distillation pulling the student toward its teacher, and
//! errors that name what is wrong.

mod common;

use candle_core::Device;
use mmoe::DType;
use mmoe_train::batch::{compute_stats, Batch};
use mmoe_train::dataset::table::{schema, FeatureColumn, TableWriter};
use mmoe_train::dataset::{self, Teacher};
use mmoe_train::network::Network;
use mmoe_train::train::{predict, train, Distill, TrainOptions, Trainer};

fn options(seed: u64) -> TrainOptions {
    TrainOptions {
        epochs: 1,
        batch_rows: 64,
        learning_rate: 3e-3,
        seed,
        progress: false,
        ..TrainOptions::default()
    }
}

fn trained(config: &mmoe::Config, data: &dataset::Rows, o: &TrainOptions) -> Network {
    let mut net =
        Network::init(config, &compute_stats(config, data), o.seed, &Device::Cpu).unwrap();
    train(&mut net, data, None, o, &mut |_| {}).unwrap();
    net
}

fn weights(net: &Network) -> Vec<Vec<f32>> {
    net.tensors
        .iter()
        .map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

#[test]
fn training_is_deterministic_by_seed() {
    let dir = test_support::tempdir().unwrap();
    let config = common::config("all-experts");
    let table = common::random_table(&config, 80, 2, 4, dir.path());
    let data = dataset::load(&table, &config, None, None).unwrap();
    let a = weights(&trained(&config, &data, &options(7)));
    let b = weights(&trained(&config, &data, &options(7)));
    let c = weights(&trained(&config, &data, &options(8)));
    assert_eq!(a, b, "same seed, same weights");
    assert_ne!(a, c, "another seed, other weights");
}

/// A second call of one [`Trainer`] goes on with Adam's moments: its first
/// step is not the first step of a fresh optimizer, which moves every weight
/// with a gradient by about the learning rate (m̂/√v̂ = ±1), as a new
/// optimizer each day of the incremental stage did.
#[test]
fn a_trainer_keeps_adams_moments_across_calls() {
    let dir = test_support::tempdir().unwrap();
    let config = common::config("all-experts");
    let table = common::random_table(&config, 80, 2, 4, dir.path());
    let data = dataset::load(&table, &config, None, None).unwrap();
    let o = options(7);
    let one_step = TrainOptions {
        batch_rows: 1 << 20, // the whole table in one batch: one step
        ..o.clone()
    };
    // The share of weights a call's single step moved by about lr.
    let moved_by_lr = |before: &[Vec<f32>], after: &[Vec<f32>]| {
        let (mut near, mut moved) = (0usize, 0usize);
        for (b, a) in before.iter().flatten().zip(after.iter().flatten()) {
            let step = (a - b).abs() as f64;
            if step > 1e-7 {
                moved += 1;
                near += usize::from((step - o.learning_rate).abs() < 0.02 * o.learning_rate);
            }
        }
        near as f64 / moved.max(1) as f64
    };
    let fresh_net = || {
        Network::init(
            &config,
            &compute_stats(&config, &data),
            o.seed,
            &Device::Cpu,
        )
        .unwrap()
    };
    // Kept: one trainer for both calls.
    let mut net = fresh_net();
    let mut trainer = Trainer::new(&net, &o).unwrap();
    trainer
        .train(&mut net, &data, None, &o, &mut |_| {})
        .unwrap();
    let before = weights(&net);
    trainer
        .train(&mut net, &data, None, &one_step, &mut |_| {})
        .unwrap();
    let kept = moved_by_lr(&before, &weights(&net));
    // Restarted: a new optimizer for the second call.
    let mut net = fresh_net();
    train(&mut net, &data, None, &o, &mut |_| {}).unwrap();
    let before = weights(&net);
    train(&mut net, &data, None, &one_step, &mut |_| {}).unwrap();
    let restarted = moved_by_lr(&before, &weights(&net));
    assert!(restarted > 0.9, "a fresh Adam's first step: {restarted}");
    assert!(
        kept < 0.5,
        "a kept Adam's step moved {kept} of the weights by about lr"
    );
}

/// Packs a briefly trained model of `config` (fp16) into `dir/teacher.mmoe`.
fn teacher_file(
    config: &mmoe::Config,
    data: &dataset::Rows,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let net = trained(config, data, &options(99));
    common::pack(&net, &dir.join("teacher"), DType::F16)
}

#[test]
fn teacher_logits_follow_the_training_rows_of_the_day_range() {
    let dir = test_support::tempdir().unwrap();
    let config = common::config("mmoe");
    let table = common::random_table(&config, 90, 3, 5, dir.path());
    let all = dataset::load(&table, &config, None, None).unwrap();
    let teacher = teacher_file(&config, &all, dir.path());

    // Every row scored by the engine, then the rows of day 1 kept.
    let expected = common::engine_logits(&teacher, &table, &|day| day == 1);
    let day1 = dataset::load(
        &table,
        &config,
        Some(1..2),
        Some(&Teacher::Model(teacher.clone())),
    )
    .unwrap();
    assert!(day1.chunk.day.iter().all(|&d| d == 1));
    assert_eq!(day1.teacher.as_ref().unwrap(), &expected);

    // The same logits, written as `logit.prod.<task>` columns, read back.
    let mut scored = all.chunk.clone();
    let full = dataset::load(&table, &config, None, Some(&Teacher::Model(teacher))).unwrap();
    for (task, column) in config.tasks.iter().zip(full.teacher.as_ref().unwrap()) {
        scored.floats.push((
            format!("logit.prod.{}", task.name),
            column.iter().map(|&v| Some(v)).collect(),
        ));
    }
    let names: Vec<String> = scored.floats.iter().map(|(n, _)| n.clone()).collect();
    let scored_path = dir.path().join("scored.parquet");
    let mut w = TableWriter::create(&scored_path, schema(&config, true, &names)).unwrap();
    w.write(&scored).unwrap();
    w.finish().unwrap();
    let from_column = dataset::load(
        &scored_path,
        &config,
        Some(1..2),
        Some(&Teacher::Column("prod".into())),
    )
    .unwrap();
    assert_eq!(from_column.teacher.as_ref().unwrap(), &expected);
}

/// Mean squared distance of the student's logits to the teacher's, and the
/// fraction of within-request pairs the student orders as the teacher does.
fn agreement(net: &Network, data: &dataset::Rows) -> (f64, f64) {
    let student = predict(net, &net.stats().unwrap(), data).unwrap();
    let teacher = data.teacher.as_ref().unwrap();
    let (mut sq, mut n) = (0.0, 0usize);
    let (mut agree, mut pairs) = (0usize, 0usize);
    for (s, t) in student.iter().zip(teacher) {
        for (a, b) in s.iter().zip(t) {
            sq += f64::from(a - b).powi(2);
            n += 1;
        }
        for request in &data.requests {
            for i in request.clone() {
                for j in i + 1..request.end {
                    if t[i] != t[j] {
                        pairs += 1;
                        agree += usize::from((s[i] > s[j]) == (t[i] > t[j]));
                    }
                }
            }
        }
    }
    (sq / n as f64, agree as f64 / pairs as f64)
}

#[test]
fn distillation_pulls_the_student_toward_the_teacher() {
    let dir = test_support::tempdir().unwrap();
    let config = common::config("mmoe");
    let table = common::random_table(&config, 200, 2, 6, dir.path());
    let plain_rows = dataset::load(&table, &config, None, None).unwrap();
    let teacher = teacher_file(
        &common::config("all-experts"),
        &dataset::load(&table, &common::config("all-experts"), None, None).unwrap(),
        dir.path(),
    );
    let data = dataset::load(&table, &config, None, Some(&Teacher::Model(teacher))).unwrap();

    let mut o = options(3);
    o.epochs = 3;
    let plain = trained(&config, &plain_rows, &o);
    let (plain_mse, plain_order) = agreement(&plain, &data);
    for (distill, lambda) in [
        (Distill::PointwiseMse, 5.0),
        (Distill::PointwiseBce, 5.0),
        (Distill::Pairwise, 5.0),
    ] {
        let mut o = o.clone();
        o.distill = Some(distill);
        o.lambda = lambda;
        let (mse, order) = agreement(&trained(&config, &data, &o), &data);
        eprintln!("{distill:?}: mse {mse:.4} (plain {plain_mse:.4}), pair agreement {order:.4} (plain {plain_order:.4})");
        if distill == Distill::Pairwise {
            assert!(
                order > plain_order + 0.02,
                "{distill:?}: {order} vs {plain_order}"
            );
        } else {
            assert!(mse < 0.7 * plain_mse, "{distill:?}: {mse} vs {plain_mse}");
        }
    }
}

#[test]
fn errors_name_what_is_wrong() {
    let dir = test_support::tempdir().unwrap();
    let config = common::config("mmoe");
    let table = common::random_table(&config, 20, 2, 8, dir.path());
    let err = |r: Result<dataset::Rows, mmoe_train::Error>| r.err().expect("an error").to_string();

    let e = err(dataset::load(&table, &config, Some(5..9), None));
    assert!(e.contains("no rows on days 5..9"), "{e}");
    let e = err(dataset::load(
        &table,
        &config,
        None,
        Some(&Teacher::Column("prod".into())),
    ));
    assert!(e.contains("logit.prod.click"), "{e}");
    let mut other = config.clone();
    other.tasks[0].name = "purchase".into();
    let e = err(dataset::load(&table, &other, None, None));
    assert!(e.contains("label.purchase"), "{e}");
    let e = err(dataset::load(
        &table,
        &config,
        None,
        Some(&Teacher::Model(dir.path().join("missing.mmoe"))),
    ));
    assert!(e.contains("missing.mmoe"), "{e}");

    // A non-finite value in an input without `"missing": "zero"`.
    let mut data = dataset::load(&table, &config, None, None).unwrap();
    let user_dense = config.input_index("user_dense").unwrap();
    if let FeatureColumn::Dense { values, dim } = &mut data.chunk.features[user_dense].1 {
        values[3 * *dim + 2] = f32::INFINITY;
    }
    let stats = compute_stats(&config, &data);
    let e = Batch::build(&config, &stats, &data, &data.requests, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    let (request, day) = (data.chunk.request_id[3], data.chunk.day[3]);
    assert!(
        e.contains("input `user_dense`: element 2 is inf")
            && e.contains(&format!("request {request} (day {day})")),
        "{e}"
    );

    // Labels other than 0/1, and a request-level input that differs within a request.
    let rows = dataset::load(&table, &config, None, None).unwrap();
    let rewrite = |chunk: &mmoe_train::dataset::table::Chunk, name: &str| {
        let path = dir.path().join(name);
        let mut w = TableWriter::create(&path, schema(&config, true, &[])).unwrap();
        w.write(chunk).unwrap();
        w.finish().unwrap();
        path
    };
    let mut bad = rows.chunk.clone();
    bad.labels[1].1[5] = 2;
    let e = err(dataset::load(
        &rewrite(&bad, "labels.parquet"),
        &config,
        None,
        None,
    ));
    assert!(
        e.contains("`label.good_click` is 2") && e.contains("labels are 0 or 1"),
        "{e}"
    );
    let mut bad = rows.chunk.clone();
    let second = rows.requests.iter().find(|r| r.len() > 1).unwrap().start + 1;
    if let FeatureColumn::Dense { values, dim } = &mut bad.features[user_dense].1 {
        values[second * *dim] += 1.0;
    }
    let e = err(dataset::load(
        &rewrite(&bad, "request.parquet"),
        &config,
        None,
        None,
    ));
    assert!(
        e.contains("request-level input `user_dense` differs"),
        "{e}"
    );

    // A distillation loss without a teacher.
    let data = dataset::load(&table, &config, None, None).unwrap();
    let mut net = Network::init(&config, &compute_stats(&config, &data), 1, &Device::Cpu).unwrap();
    let mut o = options(1);
    o.distill = Some(Distill::Pairwise);
    let e = train(&mut net, &data, None, &o, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("needs a teacher"), "{e}");

    // Weights that do not fit the config.
    net.save(dir.path()).unwrap();
    let e = Network::load(
        &common::config("dcn-shared"),
        &dir.path().join("model.safetensors"),
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("experts.dcn."),
        "{e}"
    );

    // A tensor of the right size and the wrong shape (transposed).
    let mut map = std::collections::HashMap::new();
    for (spec, v) in net.plan.tensors.iter().zip(&net.tensors) {
        let t = v.as_tensor();
        let t = if spec.name == "experts.mlp0.mlp.0.weight" {
            t.t().unwrap().contiguous().unwrap()
        } else {
            t.clone()
        };
        map.insert(spec.name.clone(), t);
    }
    let path = dir.path().join("transposed.safetensors");
    candle_core::safetensors::save(&map, &path).unwrap();
    let e = Network::load(&config, &path, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("`experts.mlp0.mlp.0.weight` has shape"), "{e}");
}
