#!/usr/bin/env python3
"""PyTorch baseline for the GPU check: the same model (read from the packed
.mmoe file, so the very same fp16-rounded weights) in PyTorch, fp32 and fp16,
eager and with CUDA graphs. Covers every expert type, gates over x0 or a
subset of its inputs (`--reference DIR` checks the model against the numpy
reference first). Timed end to end like `mmoe bench`:
host x0 in, host scores out. Feature assembly (embedding pooling, transforms)
is not included, which favours PyTorch.

    python3 torch_baseline.py --model demo.mmoe --batch 1,64,256,1024,4096 --json out.json
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mmoe_file import read_mmoe


class Model(torch.nn.Module):
    def __init__(self, config: dict, tensors: dict):
        super().__init__()
        self.config = config
        self.params = torch.nn.ParameterDict()
        for name, value in tensors.items():
            self.params[name.replace(".", "__")] = torch.nn.Parameter(torch.from_numpy(value.copy()), requires_grad=False)
        # FinalMLP's w_xy as one [k·hx·hy, H] matrix that the heads' outer
        # products multiply (MODEL.md's flat index (head·hx + a)·(hy·H) +
        # o·hy + b, read as [k, hx, H, hy]): one GEMM, as mmoe computes it.
        for e in config["experts"]:
            if e["type"] != "finalmlp":
                continue
            p = f"experts.{e['name']}"
            k, h = e["heads"], config["expert_dim"]
            hx = tensors[f"{p}.agg.w_x.weight"].shape[1] // k
            hy = tensors[f"{p}.agg.w_y.weight"].shape[1] // k
            w = tensors[f"{p}.agg.w_xy"].reshape(-1).reshape(k, hx, h, hy).transpose(0, 1, 3, 2)
            matrix = torch.from_numpy(np.ascontiguousarray(w.reshape(k * hx * hy, h)))
            self.params[f"{p}.agg.w_xy_matrix".replace(".", "__")] = torch.nn.Parameter(matrix, requires_grad=False)
        # Column indices of x0 for gates and feature-selection contexts over
        # a subset of the inputs (config order), as buffers that move with .to().
        offsets, at = {}, 0
        for i in config["inputs"]:
            offsets[i["name"]] = range(at, at + i["dim"])
            at += i["dim"]
        self.subsets = {}
        for k, names in self._subset_names(config):
            columns = [c for i in config["inputs"] if i["name"] in names for c in offsets[i["name"]]]
            self.register_buffer(f"subset_{len(self.subsets)}", torch.tensor(columns, dtype=torch.long))
            self.subsets[k] = f"subset_{len(self.subsets)}"

    @staticmethod
    def _subset_names(config):
        for task in config["tasks"]:
            if task.get("gate_inputs"):
                yield f"task {task['name']}", task["gate_inputs"]
        for e in config["experts"]:
            for s in (1, 2):
                if e["type"] == "finalmlp" and e.get("feature_selection") and e.get(f"fs{s}_context"):
                    yield f"{e['name']} fs{s}", e[f"fs{s}_context"]

    def subset(self, key, x0):
        return x0.index_select(1, getattr(self, self.subsets[key]))

    def layer_norm(self, prefix, x):
        return torch.nn.functional.layer_norm(x, (x.shape[1],), self.t(prefix + ".weight"), self.t(prefix + ".bias"),
                                              eps=1e-5)

    def t(self, name):
        return self.params[name.replace(".", "__")]

    def linear(self, prefix, x):
        bias = prefix + ".bias"
        return torch.nn.functional.linear(x, self.t(prefix + ".weight"),
                                          self.t(bias) if bias.replace(".", "__") in self.params else None)

    def mlp(self, prefix, x, layers, relu_last):
        for j in range(layers):
            x = self.linear(f"{prefix}.{j}", x)
            if j + 1 < layers or relu_last:
                x = torch.relu(x)
        return x

    def forward(self, x0):
        experts = []
        for e in self.config["experts"]:
            p = f"experts.{e['name']}"
            if e["type"] == "mlp":
                experts.append(self.mlp(p + ".mlp", x0, len(e["hidden"]), True))
                continue
            if e["type"] == "masknet":
                experts.append(self.masknet(e, p, x0))
                continue
            if e["type"] == "finalmlp":
                experts.append(self.finalmlp(e, p, x0))
                continue
            x = x0
            for l in range(e["cross_layers"]):
                q = f"{p}.cross.{l}"
                if e.get("rank") is None:
                    y = self.linear(q, x)
                else:
                    y = torch.nn.functional.linear(torch.nn.functional.linear(x, self.t(q + ".down.weight")),
                                                   self.t(q + ".up.weight")) + self.t(q + ".bias")
                x = x0 * y + x
            if e["structure"] == "stacked":
                experts.append(self.mlp(p + ".deep", x, len(e["deep"]), True))
            else:
                d = self.mlp(p + ".deep", x0, len(e["deep"]), True)
                experts.append(torch.relu(self.linear(p + ".proj", torch.cat([x, d], dim=1))))
        stacked = torch.stack(experts, dim=1)  # [B, E, H]
        logits = []
        for task in self.config["tasks"]:
            p = f"tasks.{task['name']}"
            if (p + ".gate.0.weight").replace(".", "__") not in self.params:
                w = torch.ones_like(x0[:, :1])  # one expert, no gate
            else:
                g = self.subset(f"task {task['name']}", x0) if task.get("gate_inputs") else x0
                w = torch.softmax(self.mlp(p + ".gate", g, len(task.get("gate_hidden", [])) + 1, False), dim=1)
            m = (w.unsqueeze(2) * stacked).sum(dim=1)
            logits.append(self.mlp(p + ".tower", m, len(task.get("tower", [])) + 1, False))
        return torch.cat(logits, dim=1)

    def masknet(self, e, p, x0):
        v = self.layer_norm(p + ".emb_ln", x0)
        outs = []
        for b in range(len(e["blocks"])):
            q = f"{p}.blocks.{b}"
            z = v if e["mode"] == "parallel" or b == 0 else outs[-1]
            mask = self.linear(q + ".mask.1", torch.relu(self.linear(q + ".mask.0", x0)))
            hidden = torch.nn.functional.linear(mask * z, self.t(q + ".hidden.weight"))
            outs.append(torch.relu(self.layer_norm(q + ".ln", hidden)))
        result = torch.cat(outs, dim=1) if e["mode"] == "parallel" else outs[-1]
        head = e.get("head") or []
        return self.mlp(p + ".head", result, len(head), True) if head else result

    def finalmlp(self, e, p, x0):
        streams = []
        for s in (1, 2):
            if not e.get("feature_selection"):
                streams.append(x0)
                continue
            if e.get(f"fs{s}_context"):
                context = self.subset(f"{e['name']} fs{s}", x0)
            else:
                context = self.t(f"{p}.fs{s}.ctx_bias").reshape(1, -1)
            g = self.mlp(f"{p}.fs{s}.gate", context, len(e.get("fs_hidden") or []) + 1, False)
            streams.append(x0 * (2.0 * torch.sigmoid(g)))
        o1 = self.mlp(p + ".mlp1", streams[0], len(e["mlp1"]), True)
        o2 = self.mlp(p + ".mlp2", streams[1], len(e["mlp2"]), True)
        # The multi-head bilinear fusion as one GEMM over the heads' outer
        # products (a batched product per head reads the whole w_xy for each
        # candidate: several times slower, and not what mmoe computes).
        k, n = e["heads"], x0.shape[0]
        hx, hy = o1.shape[1] // k, o2.shape[1] // k
        outer = (o1.reshape(n, k, hx, 1) * o2.reshape(n, k, 1, hy)).reshape(n, k * hx * hy)
        bilinear = outer @ self.t(p + ".agg.w_xy_matrix")
        return self.linear(p + ".agg.w_x", o1) + self.linear(p + ".agg.w_y", o2) + bilinear


def check_against_reference(config, tensors, reference_dir):
    """The baseline (CPU, float64) against the numpy reference of MODEL.md
    (mmoe_ref.py in `reference_dir`) on random x0: the worst
    |Δlogit| / (1 + |logit|). The baseline must compute the model."""
    import sys
    sys.path.insert(0, reference_dir)
    import mmoe_ref

    model = Model(config, tensors).to(dtype=torch.float64).eval()

    def run(x0):
        with torch.inference_mode():
            return model(torch.from_numpy(x0)).numpy()

    return mmoe_ref.gap_on_random_x0(config, tensors, run)


def time_calls(fn, iters, max_seconds):
    for _ in range(5):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times = []
    start = time.perf_counter()
    while len(times) < iters and time.perf_counter() - start < max_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", default="1,64,256,1024,4096")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--max-seconds", type=float, default=3.0)
    ap.add_argument("--json")
    ap.add_argument("--reference", help="folder of mmoe_ref.py: check the model against it first")
    ap.add_argument("--check-only", action="store_true", help="only the check (on the CPU), no timing")
    ap.add_argument("--compile", action="store_true",
                    help="time torch.compile(mode='reduce-overhead') of the fp16 model (fused kernels replayed as "
                         "CUDA graphs) instead of eager and hand-captured graphs")
    ap.add_argument("--device", default="cuda",
                    help="cuda (timing); cpu only with --compile, to try that path without a GPU")
    args = ap.parse_args()
    if args.device != "cuda" and not args.compile:
        raise SystemExit("--device cpu works only with --compile (the other baselines need CUDA)")
    config, tensors = read_mmoe(args.model)
    if args.reference:
        worst = check_against_reference(config, tensors, args.reference)
        print(f"baseline against the numpy reference on random x0: worst |dlogit|/(1+|logit|) {worst:.1e}")
        if not worst < 1e-6:
            raise SystemExit("the PyTorch baseline does not compute the model")
    if args.check_only:
        return
    d = sum(i["dim"] for i in config["inputs"])
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    results = {}
    print(f"torch {torch.__version__}, {device_name}; model {config['name']} (x0 width {d})")
    print(f"{'variant':<14} {'batch':>6} {'cand/s':>12} {'p50 us':>10} {'p99 us':>10}")
    if args.compile:
        compiled_baseline(config, tensors, device, sync, args, results, device_name)
    dtypes = () if args.compile else (("fp32", torch.float32), ("fp16", torch.float16))
    for dtype_name, dtype in dtypes:
        model = Model(config, tensors).to(device=device, dtype=dtype).eval()
        for batch in [int(b) for b in args.batch.split(",")]:
            rng = np.random.default_rng(batch)
            host = torch.from_numpy(rng.standard_normal((batch, d)).astype(np.float32)).to(dtype).pin_memory()
            out_host = torch.empty((batch, len(config["tasks"])), dtype=dtype).pin_memory()
            with torch.inference_mode():
                def eager():
                    x = host.to(device, non_blocking=True)
                    out_host.copy_(model(x), non_blocking=True)
                    torch.cuda.synchronize()

                static_x = torch.empty((batch, d), dtype=dtype, device=device)
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(3):
                        static_y = model(static_x)
                torch.cuda.current_stream().wait_stream(s)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_y = model(static_x)

                def graphed():
                    static_x.copy_(host, non_blocking=True)
                    graph.replay()
                    out_host.copy_(static_y, non_blocking=True)
                    torch.cuda.synchronize()

                for variant, fn in ((f"{dtype_name} eager", eager), (f"{dtype_name} graph", graphed)):
                    times = time_calls(fn, args.iters, args.max_seconds)
                    p50, p99 = times[len(times) // 2], times[min(len(times) - 1, int(0.99 * (len(times) - 1) + 0.5))]
                    cps = batch * len(times) / sum(times)
                    results.setdefault(variant, {})[str(batch)] = {"candidates_per_s": cps, "p50_us": p50 * 1e6, "p99_us": p99 * 1e6}
                    print(f"{variant:<14} {batch:>6} {cps:>12.0f} {p50 * 1e6:>10.1f} {p99 * 1e6:>10.1f}", flush=True)
    if args.json:
        json.dump({"torch": torch.__version__, "device": device_name, "results": results},
                  open(args.json, "w"), indent=1)


def compiled_baseline(config, tensors, device, sync, args, results, device_name):
    """fp16 (fp32 on a CPU) under torch.compile(mode="reduce-overhead"):
    Inductor's fused kernels, replayed as CUDA graphs; one compilation per
    batch size (dynamic=False), outside the timing, its seconds printed."""
    if not hasattr(torch, "compile"):
        print(f"skipped: torch {torch.__version__} has no torch.compile")
        return
    d = sum(i["dim"] for i in config["inputs"])
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = Model(config, tensors).to(device=device, dtype=dtype).eval()
    compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
    variant = f"{'fp16' if dtype == torch.float16 else 'fp32'} compiled"
    for batch in [int(b) for b in args.batch.split(",")]:
        rng = np.random.default_rng(batch)
        host = torch.from_numpy(rng.standard_normal((batch, d)).astype(np.float32)).to(dtype)
        out_host = torch.empty((batch, len(config["tasks"])), dtype=dtype)
        if device.type == "cuda":
            host, out_host = host.pin_memory(), out_host.pin_memory()
        with torch.inference_mode():
            def call():
                x = host.to(device, non_blocking=True)
                out_host.copy_(compiled(x), non_blocking=True)
                sync()

            start = time.perf_counter()
            for _ in range(3):  # compiles, then records the graph
                call()
            compile_s = time.perf_counter() - start
            want = model(host.to(device)).float().cpu()
            gap = float(((out_host.float() - want).abs() / (1 + want.abs())).max())
            times = time_calls(call, args.iters, args.max_seconds)
        p50, p99 = times[len(times) // 2], times[min(len(times) - 1, int(0.99 * (len(times) - 1) + 0.5))]
        cps = batch * len(times) / sum(times)
        results.setdefault(variant, {})[str(batch)] = {"candidates_per_s": cps, "p50_us": p50 * 1e6,
                                                       "p99_us": p99 * 1e6, "compile_s": compile_s,
                                                       "gap_to_eager": gap}
        print(f"{variant:<14} {batch:>6} {cps:>12.0f} {p50 * 1e6:>10.1f} {p99 * 1e6:>10.1f}"
              f"  (compiled in {compile_s:.1f} s; against eager: worst {gap:.1e})", flush=True)
        if args.json:  # after each batch size: a run cut short keeps what it timed
            json.dump({"torch": torch.__version__, "device": device_name, "results": results},
                      open(args.json, "w"), indent=1)
        if not gap < 2e-2:
            raise SystemExit(f"the compiled model is not the eager one at batch {batch}: worst {gap:.1e}")


if __name__ == "__main__":
    main()
