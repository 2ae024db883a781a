#!/usr/bin/env python3
"""The CPU benchmark: mmoe against ONNX Runtime on the same weights, in one run.

    bench/cpu_vs_ort.py [--model M.mmoe] [--batch 1,16,64,256,1024] [--modes exact,bf16] [--json OUT]

Needs onnx and onnxruntime, which the test command does not install:
`.venv/bin/pip install -r bench/requirements.txt` (then run it with .venv/bin/python).

- The model is the benchmark model (`models/bench-model.json`, built and
  packed by `mmoe demo` unless --model names another packed file).
- ONNX Runtime runs the same fp16-rounded weights as fp32 (read from the
  packed file), fed x0 (so it does no feature assembly), one intra-op thread,
  all graph optimizations, called through an I/O binding. fp32 is its best
  case on a CPU without AVX512-FP16 (its fp16 was not measured where the
  CPU has it). Two graphs: the plain export, and one that computes the
  request columns of each layer reading x0 once (the request-level work
  mmoe does once; "x split" compares against it).
- mmoe runs `mmoe bench` (end to end: raw features in, scores out) in each
  compute mode, one thread.
- It measures the machine's fp32 FMA peak (`mmoe bench --peak`) and reports
  throughput ratios and % of that peak (mmoe counts the FLOPs it executes,
  with request-level dedup; ORT the model's full FLOPs).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "gpu"))
from mmoe_file import read_mmoe  # noqa: E402


def build_onnx(config: dict, tensors: dict, split_request: bool = False) -> onnx.ModelProto:
    """The model of MODEL.md as an ONNX graph on x0: every expert type
    (FinalMLP's bilinear sum as one MatMul over the heads' outer products,
    as mmoe's layout 2 computes it), gates over x0 or a subset of its inputs.

    With `split_request`, every Linear layer that reads x0 computes its
    request-scope columns once, on the first row, and adds them to every
    candidate's (the request-level work mmoe does once): what a careful
    ONNX export of the same model would do."""
    nodes, inits = [], []
    counter = [0]

    def name(prefix):
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def init(tname, array=None):
        inits.append(numpy_helper.from_array((tensors[tname] if array is None else array).astype(np.float32), tname))
        return tname

    def _int_init(array):
        tname = name("ints")
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.int64), tname))
        return tname

    def gemm(x, prefix, bias=True):
        if split_request and x == "x0" and request_columns:
            return split_gemm(prefix, bias)
        out = name("gemm")
        inputs = [x, init(prefix + ".weight")] + ([init(prefix + ".bias")] if bias else [])
        nodes.append(helper.make_node("Gemm", inputs, [out], transB=1))
        return out

    split_inputs = {}

    def split_x0():
        """x0's request columns of the first row and its candidate columns,
        gathered once for every layer that reads them."""
        if not split_inputs:
            first_row = op("Slice", ["x0", _int_init([0]), _int_init([1]), _int_init([0])])
            split_inputs["request"] = op("Gather", [first_row, _int_init(request_columns)], axis=1)
            split_inputs["candidate"] = op("Gather", ["x0", _int_init(candidate_columns)], axis=1)
        return split_inputs["request"], split_inputs["candidate"]

    def split_gemm(prefix, bias):
        """x0 · Wᵀ (+ b) as the candidate columns' product plus the request
        columns' product of the first row, broadcast."""
        weight = tensors[prefix + ".weight"]
        request, candidate = split_x0()
        once = name("gemm")
        inputs = [request, init(name("w_request"), weight[:, request_columns])]
        nodes.append(helper.make_node("Gemm", inputs + ([init(prefix + ".bias")] if bias else []), [once], transB=1))
        per_candidate = op("Gemm", [candidate, init(name("w_candidate"), weight[:, candidate_columns])], transB=1)
        return op("Add", [per_candidate, once])

    def op(kind, inputs, **attrs):
        out = name(kind.lower())
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def mlp(prefix, x, layers, relu_last):
        for j in range(layers):
            x = gemm(x, f"{prefix}.{j}")
            if j + 1 < layers or relu_last:
                x = op("Relu", [x])
        return x

    def layer_norm(x, prefix):
        return op("LayerNormalization", [x, init(prefix + ".weight"), init(prefix + ".bias")], axis=-1, epsilon=1e-5)

    offsets, at = {}, 0
    for i in config["inputs"]:
        offsets[i["name"]] = (at, at + i["dim"])
        at += i["dim"]
    request_columns = [c for i in config["inputs"] if i.get("scope") == "request" for c in range(*offsets[i["name"]])]
    candidate_columns = [c for i in config["inputs"] if i.get("scope") != "request" for c in range(*offsets[i["name"]])]

    def subset(x, names):
        """The named inputs' columns of x0, in config order."""
        columns = [c for i in config["inputs"] if i["name"] in names for c in range(*offsets[i["name"]])]
        return op("Gather", [x, _int_init(columns)], axis=1)

    x0 = "x0"
    experts = []
    for e in config["experts"]:
        p = f"experts.{e['name']}"
        if e["type"] == "mlp":
            experts.append(mlp(p + ".mlp", x0, len(e["hidden"]), True))
        elif e["type"] == "dcnv2":
            x = x0
            for l in range(e["cross_layers"]):
                q = f"{p}.cross.{l}"
                if e.get("rank") is None:
                    y = gemm(x, q)
                else:
                    y = op("Add", [gemm(gemm(x, q + ".down", bias=False), q + ".up", bias=False), init(q + ".bias")])
                x = op("Add", [op("Mul", [x0, y]), x])
            if e["structure"] == "stacked":
                experts.append(mlp(p + ".deep", x, len(e["deep"]), True))
            else:
                d = mlp(p + ".deep", x0, len(e["deep"]), True)
                experts.append(op("Relu", [gemm(op("Concat", [x, d], axis=1), p + ".proj")]))
        elif e["type"] == "masknet":
            v = layer_norm(x0, p + ".emb_ln")
            outs = []
            for b in range(len(e["blocks"])):
                q = f"{p}.blocks.{b}"
                z = v if e["mode"] == "parallel" or b == 0 else outs[-1]
                mask = gemm(op("Relu", [gemm(x0, q + ".mask.0")]), q + ".mask.1")
                hidden = gemm(op("Mul", [mask, z]), q + ".hidden", bias=False)
                outs.append(op("Relu", [layer_norm(hidden, q + ".ln")]))
            result = op("Concat", outs, axis=1) if e["mode"] == "parallel" else outs[-1]
            head = e.get("head") or []
            experts.append(mlp(p + ".head", result, len(head), True) if head else result)
        elif e["type"] == "finalmlp":
            streams = []
            for s in (1, 2):
                if not e.get("feature_selection"):
                    streams.append(x0)
                    continue
                names = e.get(f"fs{s}_context") or []
                if names:
                    context = subset(x0, names)
                else:
                    context = init(f"{p}.fs{s}.ctx_bias", tensors[f"{p}.fs{s}.ctx_bias"].reshape(1, -1))
                g = mlp(f"{p}.fs{s}.gate", context, len(e.get("fs_hidden") or []) + 1, False)
                two = init(name("two"), np.array(2.0, dtype=np.float32))
                streams.append(op("Mul", [x0, op("Mul", [two, op("Sigmoid", [g])])]))
            o1 = mlp(p + ".mlp1", streams[0], len(e["mlp1"]), True)
            o2 = mlp(p + ".mlp2", streams[1], len(e["mlp2"]), True)
            k, h = e["heads"], config["expert_dim"]
            hx = tensors[f"{p}.agg.w_x.weight"].shape[1] // k
            hy = tensors[f"{p}.agg.w_y.weight"].shape[1] // k
            # MODEL.md's flat index (head·hx + a)·(hy·H) + o·hy + b: as
            # [k, hx, H, hy], then rows (head, a, b) of one [k·hx·hy, H]
            # matrix that the heads' outer products x_a·y_b multiply.
            w = tensors[f"{p}.agg.w_xy"].reshape(-1).reshape(k, hx, h, hy).transpose(0, 1, 3, 2)
            w = init(f"{p}.agg.w_xy", w.reshape(k * hx * hy, h))
            head_x = op("Reshape", [o1, _int_init([-1, k, hx, 1])])
            head_y = op("Reshape", [o2, _int_init([-1, k, 1, hy])])
            outer = op("Reshape", [op("Mul", [head_x, head_y]), _int_init([-1, k * hx * hy])])
            bil = op("MatMul", [outer, w])
            experts.append(op("Add", [op("Add", [gemm(o1, p + ".agg.w_x"), gemm(o2, p + ".agg.w_y")]), bil]))
        else:
            raise SystemExit(f"the ONNX baseline does not cover {e['type']} experts")
    axes_name = "axes_one"
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), axes_name))
    stacked = op("Concat", [op("Unsqueeze", [e, axes_name]) for e in experts], axis=1)  # [B, E, H]
    logits = []
    for task in config["tasks"]:
        p = f"tasks.{task['name']}"
        g = subset(x0, task["gate_inputs"]) if task.get("gate_inputs") else x0
        w = op("Softmax", [mlp(p + ".gate", g, len(task.get("gate_hidden", [])) + 1, False)], axis=1)
        m = op("ReduceSum", [op("Mul", [op("Unsqueeze", [w, "axes_two"]), stacked]), axes_name], keepdims=0)
        logits.append(mlp(p + ".tower", m, len(task.get("tower", [])) + 1, False))
    inits.append(numpy_helper.from_array(np.array([2], dtype=np.int64), "axes_two"))
    out = op("Concat", logits, axis=1)
    nodes.append(helper.make_node("Identity", [out], ["logits"]))
    d = sum(i["dim"] for i in config["inputs"])
    graph = helper.make_graph(
        nodes, config["name"],
        [helper.make_tensor_value_info("x0", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(config["tasks"])])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def model_flops(config: dict, tensors: dict) -> int:
    """Multiply-add FLOPs per candidate of every Linear layer and of
    FinalMLP's bilinear sums, without dedup: 2 per weight, but for the
    feature gates of a learned context, run once per request."""
    learned = {f"experts.{e['name']}.fs{s}.gate" for e in config["experts"] for s in (1, 2)
               if e["type"] == "finalmlp" and e.get("feature_selection") and not e.get(f"fs{s}_context")}
    total = 0
    for tname, value in tensors.items():
        linear = tname.endswith(".weight") and value.ndim == 2 and not tname.startswith("inputs.")
        if (linear and not any(tname.startswith(g + ".") for g in learned)) or tname.endswith(".agg.w_xy"):
            total += 2 * value.size
    return total


def check_onnx(session, config: dict, tensors: dict) -> float:
    """The ONNX graph against the numpy reference of MODEL.md
    (tests/python/mmoe_ref.py) on random x0: the worst
    |Δlogit| / (1 + |logit|). The baseline must compute the model."""
    sys.path.insert(0, str(ROOT / "tests" / "python"))
    import mmoe_ref

    run = lambda x0: session.run(["logits"], {"x0": x0.astype(np.float32)})[0]
    return mmoe_ref.gap_on_random_x0(config, tensors, run)


def request_x0(config: dict, batch: int, seed: int) -> np.ndarray:
    """Random x0 whose request-scope columns are the same in every row, as
    in a real request."""
    x = np.random.default_rng(seed).standard_normal((batch, sum(i["dim"] for i in config["inputs"])))
    at = 0
    for i in config["inputs"]:
        if i["scope"] == "request":
            x[:, at:at + i["dim"]] = x[0, at:at + i["dim"]]
        at += i["dim"]
    return x.astype(np.float32)


def check_split(split, plain, config: dict) -> float:
    """The request-split graph against the plain one (checked against numpy)
    on requests: the worst |Δlogit| / (1 + |logit|)."""
    worst = 0.0
    for batch in (1, 5, 64):
        x = request_x0(config, batch, batch)
        a = split.run(["logits"], {"x0": x})[0]
        b = plain.run(["logits"], {"x0": x})[0]
        worst = max(worst, float(np.max(np.abs(a - b) / (1 + np.abs(b)))))
    return worst


def time_ort(session, config, batch, iters, max_seconds):
    """Calls through an I/O binding with the output bound once (no Python
    allocation per call)."""
    x = request_x0(config, batch, batch)
    binding = session.io_binding()
    binding.bind_cpu_input("x0", x)
    out = ort.OrtValue.ortvalue_from_numpy(np.empty((batch, len(config["tasks"])), dtype=np.float32))
    binding.bind_ortvalue_output("logits", out)
    for _ in range(5):
        session.run_with_iobinding(binding)
    times = []
    start = time.perf_counter()
    while len(times) < iters and time.perf_counter() - start < max_seconds:
        t0 = time.perf_counter()
        session.run_with_iobinding(binding)
        times.append(time.perf_counter() - t0)
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(round(q * (len(times) - 1))))]
    return {"candidates_per_s": batch * len(times) / sum(times), "p50_us": p(0.5) * 1e6, "p99_us": p(0.99) * 1e6,
            "calls": len(times)}


def main() -> int:
    ap = argparse.ArgumentParser(description="mmoe vs ONNX Runtime, one thread, same weights, same run")
    ap.add_argument("--mmoe", default=str(ROOT / "target" / "release" / "mmoe"))
    ap.add_argument("--model", help="packed model (default: the demo model, built now)")
    ap.add_argument("--batch", default="1,16,64,256,1024")
    ap.add_argument("--modes", default="exact", help="mmoe compute modes, comma-separated")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--max-seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3, help="best of this many interleaved rounds")
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mmoe-bench-"))
    model_path = args.model
    if model_path is None:
        model_path = str(work / "demo.mmoe")
        subprocess.run([args.mmoe, "demo", "--candidates", "8", "--out", model_path], check=True, stdout=subprocess.DEVNULL)
    config, tensors = read_mmoe(model_path)
    d = sum(i["dim"] for i in config["inputs"])
    batches = [int(b) for b in args.batch.split(",")]

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} CPUs; Python {platform.python_version()}, onnxruntime {ort.__version__}")
    print(f"model: {config['name']} ({model_path}), x0 width {d}, "
          f"{model_flops(config, tensors) / 1e6:.2f} MFLOP per candidate")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(build_onnx(config, tensors).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    split = ort.InferenceSession(build_onnx(config, tensors, split_request=True).SerializeToString(), opts,
                                 providers=["CPUExecutionProvider"])
    ort_flops = model_flops(config, tensors)
    worst = check_onnx(session, config, tensors)
    print(f"ONNX graph against the numpy reference on random x0: worst |dlogit|/(1+|logit|) {worst:.1e}")
    if not worst < 1e-3:
        raise SystemExit("the ONNX baseline does not compute the model")
    worst = check_split(split, session, config)
    print(f"ONNX graph with the request part once, against the plain graph: worst {worst:.1e}")
    if not worst < 1e-4:
        raise SystemExit("the request-split ONNX baseline does not compute the model")
    ort_sessions = {"ort": session, "ort_split": split}

    # This machine is shared: measurements drift. Each round measures every
    # batch size of ORT and of each mmoe mode back to back; the best round of
    # each is kept, so both sides get the same chances.
    modes = args.modes.split(",")
    engine: dict = {}
    ort_results: dict = {variant: {} for variant in ort_sessions}
    peak = 0.0
    for round_ in range(args.rounds):
        for b in batches:
            for variant, s in ort_sessions.items():
                o = time_ort(s, config, b, args.iters, args.max_seconds)
                if o["candidates_per_s"] > ort_results[variant].get(str(b), {}).get("candidates_per_s", 0):
                    ort_results[variant][str(b)] = o
            for mode in modes:
                out = work / f"mmoe-{mode}-{b}.json"
                cmd = [args.mmoe, "bench", "--model", model_path, "--batch", str(b), "--threads", "1",
                       "--iters", str(args.iters), "--max-seconds", str(args.max_seconds), "--json", str(out),
                       "--mode", mode] + (["--peak"] if round_ == 0 and b == batches[0] else [])
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                report = json.load(open(out))
                if report.get("peak_gflops"):
                    peak = max(peak, report["peak_gflops"])
                kept = engine.setdefault(mode, {k: v for k, v in report.items() if k != "results"} | {"results": {}})
                r = report["results"][str(b)]
                if r["candidates_per_s"] > kept["results"].get(str(b), {}).get("candidates_per_s", 0):
                    kept["results"][str(b)] = r
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    print("mmoe command per batch and mode: " + " ".join([args.mmoe, "bench", "--model", model_path, "--batch", "B",
          "--threads", "1", "--iters", str(args.iters), "--max-seconds", str(args.max_seconds), "--mode", "MODE"]))

    print()
    print(f"fp32 FMA peak, one thread: {peak:.1f} GFLOP/s")
    print("ORT: the plain graph; ORT split: each layer reading x0 computes its request columns once (as mmoe does)")
    header = f"{'batch':>6} {'ORT cand/s':>11} {'ORT p50us':>10} {'ORT %pk':>8} {'split cand/s':>13} {'split p50us':>11}"
    for mode, report in engine.items():
        # The mode that ran (bf16 falls back to exact where it is not faster).
        ran = report.get("cpu_mode", mode).split(" ")[0]
        header += (f" | {ran + ' cand/s':>13} {'p50us':>9} {'p99us':>9} {'%pk':>5} {'x ORT':>6} {'x split':>7}")
    print(header)
    for b in batches:
        o, o_split = ort_results["ort"][str(b)], ort_results["ort_split"][str(b)]
        line = (f"{b:>6} {o['candidates_per_s']:>11.0f} {o['p50_us']:>10.1f} "
                f"{100 * o['candidates_per_s'] * ort_flops / 1e9 / peak:>8.0f} "
                f"{o_split['candidates_per_s']:>13.0f} {o_split['p50_us']:>11.1f}")
        for mode, report in engine.items():
            r = report["results"][str(b)]
            pk = 100 * r["candidates_per_s"] * report["flops_per_candidate"] / 1e9 / peak
            line += (f" | {r['candidates_per_s']:>13.0f} {r['p50_us']:>9.1f} {r['p99_us']:>9.1f} {pk:>5.0f}"
                     f" {r['candidates_per_s'] / o['candidates_per_s']:>6.2f}"
                     f" {r['candidates_per_s'] / o_split['candidates_per_s']:>7.2f}")
        print(line)
    if args.json:
        json.dump({"machine": cpu, "onnxruntime": ort.__version__, "peak_gflops": peak, "model_flops": ort_flops,
                   "rounds": args.rounds, "ort": ort_results["ort"], "ort_split": ort_results["ort_split"],
                   "mmoe": engine}, open(args.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
