//! The trainer's forward pass against the engine: a trained model, exported
//! and packed, scores the same rows through `mmoe` as the trainer computes
//! them, within 1e-4 (f32 file, exact mode), for every expert type.

mod common;

use candle_core::Device;
use mmoe::DType;
use mmoe_train::batch::compute_stats;
use mmoe_train::dataset;
use mmoe_train::network::Network;
use mmoe_train::train::{predict, train, TrainOptions};

/// Max |trainer − engine| over every row and task, for a model trained a
/// little on a random table.
fn parity(config_name: &str, dtype: DType) -> f32 {
    let dir = test_support::tempdir().unwrap();
    let config = common::config(config_name);
    let table = common::random_table(&config, 120, 3, 11, dir.path());
    let data = dataset::load(&table, &config, None, None).unwrap();
    let device = Device::Cpu;
    let mut net = Network::init(&config, &compute_stats(&config, &data), 5, &device).unwrap();
    let options = TrainOptions {
        epochs: 2,
        batch_rows: 64,
        learning_rate: 3e-3,
        progress: false,
        ..TrainOptions::default()
    };
    train(&mut net, &data, None, &options, &mut |_| {}).unwrap();
    let trainer = predict(&net, &net.stats().unwrap(), &data).unwrap();

    let packed = common::pack(&net, dir.path(), dtype);
    let engine = common::engine_logits(&packed, &table, &|_| true);
    let mut worst = 0f32;
    for (a, b) in trainer.iter().zip(&engine) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!(x.is_finite() && y.is_finite());
            worst = worst.max((x - y).abs());
        }
    }
    // The model learned something: logits are not all one value.
    let spread = trainer[0].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
        - trainer[0].iter().fold(f32::INFINITY, |m, &v| m.min(v));
    assert!(spread > 0.05, "logit spread {spread}");
    worst
}

#[test]
fn every_expert_type_matches_the_engine_within_1e_4() {
    let worst = parity("all-experts", DType::F32);
    eprintln!("all-experts f32: max |trainer − engine| = {worst:e}");
    assert!(worst <= 1e-4, "max |Δ| {worst}");
}

#[test]
fn the_other_variant_of_each_expert_matches_the_engine_within_1e_4() {
    // Full-rank stacked DCNv2, serial MaskNet without a head, FinalMLP
    // without feature selection and with an input context and no hidden
    // layer, MLP gates, a two-layer tower.
    let worst = parity("all-experts-variants", DType::F32);
    eprintln!("all-experts-variants f32: max |trainer − engine| = {worst:e}");
    assert!(worst <= 1e-4, "max |Δ| {worst}");
}

#[test]
fn mmoe_of_dcn_and_mlp_experts_matches_the_engine_within_1e_4() {
    let worst = parity("mmoe", DType::F32);
    eprintln!("mmoe f32: max |trainer − engine| = {worst:e}");
    assert!(worst <= 1e-4, "max |Δ| {worst}");
}

#[test]
fn shared_bottom_without_a_gate_matches_the_engine() {
    let worst = parity("dcn-shared", DType::F32);
    assert!(worst <= 1e-4, "max |Δ| {worst}");
}

#[test]
fn an_fp16_file_stays_close_to_the_trainer() {
    let worst = parity("all-experts", DType::F16);
    eprintln!("all-experts f16: max |trainer − engine| = {worst:e}");
    assert!(worst <= 2e-2, "max |Δ| {worst}");
}
