//! `mmoe-gpu-emu score`: scores a JSONL request file through the GPU path
//! run on the host (like `mmoe score --device cuda`), for the parity
//! harness (`tests/python/test_parity.py --emu`).
//!
//!     mmoe-gpu-emu score --model M.mmoe --requests R.jsonl --out O.jsonl
//!         [--precision f16|f32] [--fused-heads] [--wide-tiles] [--f32-inputs] [--f32-values] [--fused-norm] [--fused-logit]
//!
//! `--fused-heads`: gates, mixture, towers and logits of every task in one
//! launch (the engine's `MMOE_GPU_FUSED_HEADS=1`; separate launches by default). `--wide-tiles`: the 128×128-tile
//! kernel at every bucket (the engine's `MMOE_GPU_TILES=wide` uses it from
//! 512 rows), so small requests exercise it too. `--f32-inputs`: GEMMs that
//! convert the f32 activations instead of reading fp16 copies
//! (`MMOE_GPU_HALF_X=0`). `--f32-values`: the request's values uploaded as
//! f32 (`MMOE_GPU_HALF_VALUES=0`; with fp16 compute, those of candidate
//! inputs without log1p or standardize go as fp16 by default).
//! `--fused-norm`: MaskNet's LayerNorm in the GEMM epilogue
//! (`MMOE_GPU_FUSED_NORM=1`). `--fused-logit`: each task's logit in the
//! epilogue of its tower's last hidden layer (`MMOE_GPU_FUSED_LOGIT=1`).

use std::io::{BufRead, Write};
use std::path::PathBuf;

use mmoe::gpu::launch_plan::{PlanOptions, Precision, Tiles};
use mmoe::{jsonl, Model, OpenOptions};
use mmoe_gpu_emu::EmuModel;

struct Args {
    model: PathBuf,
    requests: PathBuf,
    out: PathBuf,
    precision: Precision,
    options: PlanOptions,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    if args.next().as_deref() != Some("score") {
        return Err("usage: mmoe-gpu-emu score --model M --requests R --out O [--precision f16|f32] [--fused-heads] [--wide-tiles] [--f32-inputs] [--f32-values] [--fused-norm] [--fused-logit]".into());
    }
    let (mut model, mut requests, mut out) = (None, None, None);
    let mut precision = Precision::F16;
    let mut options = PlanOptions::default();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--requests" => requests = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--precision" => {
                precision = match value()?.as_str() {
                    "f16" => Precision::F16,
                    "f32" => Precision::F32,
                    other => return Err(format!("--precision `{other}`: expected f16 or f32")),
                }
            }
            "--fused-heads" => options.fused_heads = true,
            "--wide-tiles" => options.tiles = Tiles::Wide { from_rows: 0 },
            "--f32-inputs" => options.half_x = false,
            "--f32-values" => options.half_values = false,
            "--fused-norm" => options.fused_norm = true,
            "--fused-logit" => options.fused_logit = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Args {
        model: model.ok_or("--model is required")?,
        requests: requests.ok_or("--requests is required")?,
        out: out.ok_or("--out is required")?,
        precision,
        options,
    })
}

fn run(args: Args) -> Result<usize, String> {
    let model = Model::open(&args.model, &OpenOptions::default()).map_err(|e| e.to_string())?;
    let tasks = model.num_tasks();
    let emu = EmuModel::new(model.clone(), args.precision, args.options);
    let input = std::fs::File::open(&args.requests)
        .map_err(|e| format!("cannot read {}: {e}", args.requests.display()))?;
    let mut output = std::io::BufWriter::new(
        std::fs::File::create(&args.out)
            .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?,
    );
    let mut failed = 0;
    for (index, line) in std::io::BufReader::new(input).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", args.requests.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let text = match jsonl::parse_request(&line, model.config())
            .map_err(|e| e.to_string())
            .and_then(|owned| emu.score(&owned.as_request()))
        {
            Ok(logits) => {
                let probabilities: Vec<f32> = logits
                    .iter()
                    .map(|&l| mmoe::reference::sigmoid(l))
                    .collect();
                jsonl::format_answer(&logits, &probabilities, tasks)
            }
            Err(e) => {
                failed += 1;
                eprintln!("mmoe-gpu-emu: line {}: {e}", index + 1);
                serde_json::json!({ "error": e, "line": index + 1 }).to_string()
            }
        };
        writeln!(output, "{text}").map_err(|e| format!("{}: {e}", args.out.display()))?;
    }
    output
        .flush()
        .map_err(|e| format!("{}: {e}", args.out.display()))?;
    Ok(failed)
}

fn main() {
    match parse(std::env::args().skip(1)).and_then(run) {
        Ok(0) => {}
        Ok(failed) => {
            eprintln!("mmoe-gpu-emu: {failed} request(s) failed");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("mmoe-gpu-emu: {e}");
            std::process::exit(2);
        }
    }
}
