//! The command line: pack → inspect → verify → score, and errors that name
//! the line, field, tensor or file at fault without losing other lines.

use crate::common;

use std::process::Command;

use common::{config, write_safetensors, SMALL_CONFIG};

fn mmoe(args: &[&str]) -> (bool, String, String) {
    mmoe_with_env(args, &[])
}

/// [`mmoe`] with environment variables set.
fn mmoe_with_env(args: &[&str], vars: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mmoe"))
        .args(args)
        .envs(vars.iter().copied())
        .output()
        .expect("run mmoe");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The exit status of `mmoe args`.
fn mmoe_status(args: &[&str]) -> Option<i32> {
    Command::new(env!("CARGO_BIN_EXE_mmoe"))
        .args(args)
        .output()
        .expect("run mmoe")
        .status
        .code()
}

struct Files {
    dir: test_support::TempDir,
}

impl Files {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// `mmoe pack` of the small model's config and weights into `out`.
    fn pack(&self, out: &str) -> (bool, String, String) {
        self.pack_with(out, &[])
    }

    /// [`Files::pack`] with more arguments.
    fn pack_with(&self, out: &str, extra: &[&str]) -> (bool, String, String) {
        let (config, weights, out) = (
            self.path("model.json"),
            self.path("model.safetensors"),
            self.path(out),
        );
        let args = [
            "pack",
            "--config",
            &config,
            "--weights",
            &weights,
            "--out",
            &out,
        ];
        mmoe(&[&args[..], extra].concat())
    }
}

/// The small model's config and weights as files.
fn small_files() -> Files {
    let files = Files {
        dir: test_support::tempdir().unwrap(),
    };
    std::fs::write(files.path("model.json"), SMALL_CONFIG).unwrap();
    let source = mmoe::demo::synthetic_tensors(&config(SMALL_CONFIG), 3).unwrap();
    write_safetensors(
        files.dir.path().join("model.safetensors").as_path(),
        &source,
        |_| "F32",
    );
    files
}

#[test]
fn pack_inspect_verify_score() {
    let f = small_files();
    let (ok, _, err) = f.pack("m.mmoe");
    assert!(ok, "{err}");
    assert!(
        err.contains("packed `small`") && err.contains("f16"),
        "{err}"
    );

    let (ok, out, _) = mmoe(&["inspect", &f.path("m.mmoe")]);
    assert!(ok);
    assert!(
        out.contains("experts.f.agg.w_xy")
            && out.contains("panel32")
            && out.contains("bilinear32")
            && out.contains("f16, layout version 2")
            && out.contains("tasks      click, save"),
        "{out}"
    );
    let (ok, out, _) = mmoe(&["inspect", "--config", &f.path("m.mmoe")]);
    assert!(ok && out.contains("\"finalmlp\""), "{out}");

    // For engines that read only version 1: w_xy row-major.
    let (ok, _, err) = f.pack_with("v1.mmoe", &["--layout-version", "1"]);
    assert!(ok, "{err}");
    let (ok, out, _) = mmoe(&["inspect", &f.path("v1.mmoe")]);
    let w_xy = out.lines().find(|l| l.contains("experts.f.agg.w_xy"));
    assert!(
        ok && out.contains("f16, layout version 1")
            && w_xy.is_some_and(|l| l.contains("row-major")),
        "{out}"
    );

    let (ok, out, _) = mmoe(&["verify", &f.path("m.mmoe")]);
    assert!(ok && out.starts_with("ok:"), "{out}");

    // Four lines: good, bad JSON, bad field, good. The bad ones are reported
    // by line and field; the good ones are scored.
    let u = "[0.5, 1.0, -2.0, 0.0]";
    let a = "[[0,1,2,3,4,5],[1,1,1,1,1,null]]";
    let good = format!(
        r#"{{"n": 2, "dense": {{"u": {u}, "a": {a}}}, "sparse": {{"us": [[1, 2]], "as": [[3], []]}}}}"#
    );
    let bad_field = good.replace("[[3], []]", "[[3]]");
    let null_strict = good.replace("[0.5, 1.0, -2.0, 0.0]", "[0.5, null, -2.0, 0.0]");
    let unknown = good.replace("\"u\":", "\"user\": [1], \"u\":");
    let lines = [
        good.as_str(),
        "{not json",
        bad_field.as_str(),
        null_strict.as_str(),
        unknown.as_str(),
        good.as_str(),
    ];
    std::fs::write(f.path("requests.jsonl"), lines.join("\n")).unwrap();
    let (ok, _, err) = mmoe(&[
        "score",
        "--model",
        &f.path("m.mmoe"),
        "--requests",
        &f.path("requests.jsonl"),
        "--out",
        &f.path("scores.jsonl"),
    ]);
    assert!(!ok, "a failed line makes the exit status non-zero (3)");
    assert!(err.contains("line 2: not valid JSON"), "{err}");
    assert!(
        err.contains("line 3: field `sparse.as`: 1 bags, expected 2"),
        "{err}"
    );
    assert!(
        err.contains(
            "line 4: model `small`: input `u` (request scope) element 1: value NaN is not finite"
        ),
        "{err}"
    );
    assert!(
        err.contains("line 5: field `dense.user`: the model has no such input"),
        "{err}"
    );
    assert!(err.contains("scored 2 request(s), 4 failed"), "{err}");
    let answers: Vec<serde_json::Value> = std::fs::read_to_string(f.path("scores.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 6, "one answer line per request line");
    assert_eq!(answers[0], answers[5]);
    assert_eq!(answers[0]["logits"].as_array().unwrap().len(), 2);
    assert_eq!(answers[0]["probabilities"][1].as_array().unwrap().len(), 2);
    assert!(answers[1]["error"].as_str().unwrap().starts_with("line 2:"));
}

#[test]
fn cli_errors_name_the_file_and_tensor() {
    let f = small_files();
    // A config the weights do not fit.
    std::fs::write(
        f.path("other.json"),
        SMALL_CONFIG.replace("\"hidden\": [10, 8]", "\"hidden\": [11, 8]"),
    )
    .unwrap();
    let (ok, _, err) = mmoe(&[
        "pack",
        "--config",
        &f.path("other.json"),
        "--weights",
        &f.path("model.safetensors"),
        "--out",
        &f.path("x.mmoe"),
    ]);
    assert!(!ok);
    assert!(
        err.contains("tensor `experts.m.mlp.0.weight` has shape [10, 16], expected [11, 16]"),
        "{err}"
    );
    assert!(!std::path::Path::new(&f.path("x.mmoe")).exists());

    let (ok, _, err) = mmoe(&[
        "pack",
        "--config",
        &f.path("model.json"),
        "--weights",
        &f.path("nope"),
        "--out",
        &f.path("x.mmoe"),
    ]);
    assert!(!ok && err.contains("nope"), "{err}");
    let (ok, _, err) = f.pack_with("x.mmoe", &["--dtype", "int8"]);
    assert!(!ok && err.contains("--dtype int8"), "{err}");

    // Corrupt tensor data: open works, verify names the tensor.
    let (ok, _, _) = f.pack("m.mmoe");
    assert!(ok);
    let mut bytes = std::fs::read(f.path("m.mmoe")).unwrap();
    let n = bytes.len();
    bytes[n - 70] ^= 0xff;
    std::fs::write(f.path("m.mmoe"), &bytes).unwrap();
    let (ok, _, err) = mmoe(&["verify", &f.path("m.mmoe")]);
    assert!(
        !ok && err.contains("is corrupt") && err.contains("m.mmoe"),
        "{err}"
    );
    bytes.truncate(n - 1);
    std::fs::write(f.path("m.mmoe"), &bytes).unwrap();
    let (ok, _, err) = mmoe(&["inspect", &f.path("m.mmoe")]);
    assert!(!ok && err.contains("truncated"), "{err}");
}

/// `mmoe bench --phases` breaks GPU calls down; on the CPU it says why not.
#[test]
fn bench_phases_need_a_gpu() {
    let f = small_files();
    let (ok, _, err) = f.pack("p.mmoe");
    assert!(ok, "{err}");
    let (ok, _, err) = mmoe(&[
        "bench",
        "--model",
        &f.path("p.mmoe"),
        "--batch",
        "2",
        "--iters",
        "2",
        "--phases",
    ]);
    // (A build without the `cuda` feature says it has no GPU support.)
    let why = err.contains("does not run on a GPU") || err.contains("no GPU support");
    assert!(!ok && err.contains("--phases") && why, "{err}");
}

/// `MMOE_CPU_SPIN_US` sets how long intra-request helpers spin; a value
/// that is not a number of µs fails the calls that split, naming it.
#[test]
fn a_bad_helper_spin_is_an_error_naming_the_variable() {
    let f = small_files();
    let (ok, _, err) = f.pack("p.mmoe");
    assert!(ok, "{err}");
    let model = f.path("p.mmoe");
    let bench = [
        "bench",
        "--model",
        &model,
        "--batch",
        "4",
        "--iters",
        "2",
        "--intra-threads",
        "2",
    ];
    let (ok, out, err) = mmoe_with_env(&bench, &[("MMOE_CPU_SPIN_US", "50")]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = mmoe_with_env(&bench, &[("MMOE_CPU_SPIN_US", "1ms")]);
    assert!(
        !ok && err.contains("MMOE_CPU_SPIN_US is `1ms`: expected 0 to 1000000 (µs)"),
        "{err}"
    );
}

/// Inputs that crashed the command line, or lost data, are refused with a
/// message naming what is at fault: a candidate count past the limit (it
/// sized the outputs first), a line that is not UTF-8 (it ended the run), a
/// number past f32 (read as missing), an output file that is an input
/// (emptied while read or mapped), and counts or durations that allocated,
/// spawned or panicked before any check.
#[test]
fn cli_refuses_what_would_crash_it() {
    let f = small_files();
    let (ok, _, err) = f.pack("m.mmoe");
    assert!(ok, "{err}");
    let good = r#"{"n": 1, "dense": {"u": [0.5, 1.0, -2.0, 0.0], "a": [[0,1,2,3,4,5]]}, "sparse": {"us": [[1]], "as": [[3]]}}"#;
    let huge_n = good.replace("\"n\": 1", "\"n\": 4611686018427387904");
    let past_f32 = good.replace("[[0,1,2", "[[1e39,1,2");
    // The first line after a byte-order mark, which is skipped.
    let mut requests = b"\xEF\xBB\xBF".to_vec();
    for line in [
        huge_n.as_bytes(),
        b"{\"n\": \xff}",
        past_f32.as_bytes(),
        good.as_bytes(),
    ] {
        requests.extend_from_slice(line);
        requests.push(b'\n');
    }
    std::fs::write(f.path("requests.jsonl"), &requests).unwrap();
    let score = |out: &str| {
        mmoe(&[
            "score",
            "--model",
            &f.path("m.mmoe"),
            "--requests",
            &f.path("requests.jsonl"),
            "--out",
            out,
        ])
    };
    let (ok, _, err) = score(&f.path("scores.jsonl"));
    assert!(!ok && !err.contains("panicked"), "{err}");
    let scores = f.path("scores.jsonl");
    let (model_path, requests_path) = (f.path("m.mmoe"), f.path("requests.jsonl"));
    let args = [
        "score",
        "--model",
        &model_path,
        "--requests",
        &requests_path,
        "--out",
    ];
    assert_eq!(
        mmoe_status(&[&args[..], &[&scores]].concat()),
        Some(3),
        "some lines failed"
    );
    assert_eq!(
        mmoe_status(&[&args[..], &[&requests_path]].concat()),
        Some(1),
        "the command failed"
    );
    assert!(
        err.contains(
            "line 1: field `n`: 4611686018427387904 candidates, above the limit of 16777216"
        ),
        "{err}"
    );
    assert!(err.contains("line 2: not valid UTF-8 (byte 6)"), "{err}");
    assert!(
        err.contains("line 3: field `dense.a[0][0]`: 1e+39 is outside the range of a 32-bit float"),
        "{err}"
    );
    assert!(err.contains("scored 1 request(s), 3 failed"), "{err}");
    let answers = std::fs::read_to_string(f.path("scores.jsonl")).unwrap();
    assert_eq!(answers.lines().count(), 4, "{answers}");
    assert!(
        answers.lines().last().unwrap().starts_with("{\"logits\""),
        "{answers}"
    );

    // The output may not be an input: both stay as they were.
    let model_len = std::fs::metadata(f.path("m.mmoe")).unwrap().len();
    for (out, input) in [
        (f.path("requests.jsonl"), f.path("requests.jsonl")),
        (f.path("m.mmoe"), f.path("m.mmoe")),
    ] {
        let (ok, _, err) = score(&out);
        assert!(
            !ok && err.contains(&format!("--out {out} is the input {input}")),
            "{err}"
        );
    }
    // A backend the model cannot run on is one error, not one per line.
    let (ok, _, err) = mmoe(&[
        "score",
        "--model",
        &f.path("m.mmoe"),
        "--requests",
        &f.path("requests.jsonl"),
        "--out",
        &f.path("cuda.jsonl"),
        "--backend",
        "cuda",
    ]);
    assert!(!ok && err.contains("--backend cuda: "), "{err}");
    assert!(!err.contains("line 1"), "{err}");
    // A hard link to the requests is the requests too.
    std::fs::hard_link(f.path("requests.jsonl"), f.path("link.jsonl")).unwrap();
    let (ok, _, err) = score(&f.path("link.jsonl"));
    assert!(!ok && err.contains("is the input"), "{err}");
    assert_eq!(std::fs::read(f.path("requests.jsonl")).unwrap(), requests);
    assert_eq!(
        std::fs::metadata(f.path("m.mmoe")).unwrap().len(),
        model_len
    );

    let model = f.path("m.mmoe");
    let out = f.path("x");
    for (args, message) in [
        (
            &[
                "demo",
                "--candidates",
                "18446744073709551615",
                "--out",
                &out,
            ][..],
            "--candidates 18446744073709551615: above the limit of 16777216",
        ),
        (
            &["bench", "--model", &model, "--batch", "100000000000"][..],
            "--batch: 100000000000 is above the limit of 16777216",
        ),
        (
            &["bench", "--model", &model, "--max-seconds=-1"][..],
            "--max-seconds must be 0 to 1000000, got -1",
        ),
        (
            &["bench", "--model", &model, "--max-seconds", "NaN"][..],
            "--max-seconds must be 0 to 1000000, got NaN",
        ),
        (
            &["bench", "--model", &model, "--threads", "100000"][..],
            "--threads must be 1 to 256, got 100000",
        ),
        (
            &["bench", "--model", &model, "--intra-threads", "0"][..],
            "--intra-threads must be 1 to 256, got 0",
        ),
        (
            &[
                "synth",
                "--rows",
                "10",
                "--days",
                "4294967295",
                "--out",
                &out,
            ][..],
            "--days 4294967295 is above the limit of 2147483647",
        ),
        (
            &[
                "synth",
                "--rows",
                "10",
                "--users",
                "18446744073709551615",
                "--out",
                &out,
            ][..],
            "--users 18446744073709551615 is above the limit of 100000000",
        ),
        (
            &[
                "synth",
                "--rows",
                "10",
                "--relatedness",
                "NaN",
                "--out",
                &out,
            ][..],
            "--relatedness NaN must be in [0, 1]",
        ),
        (
            &["synth", "--rows", "10", "--drift", "inf", "--out", &out][..],
            "--drift inf must be a finite angle",
        ),
        (
            &["eval", "--model", &model, "--data", &out, "--plot", "x.txt"][..],
            "--plot x.txt: the plot is a PNG image",
        ),
    ] {
        let (ok, _, err) = mmoe(args);
        assert!(!ok && err.contains(message), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
