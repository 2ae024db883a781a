#!/usr/bin/env python3
"""PyTorch baseline for the GPU check: the same model (read from the packed
.mmoe file, so the very same fp16-rounded weights) in PyTorch, fp32 and fp16,
eager and with CUDA graphs. Covers MLP and DCNv2 experts with light or MLP
gates (the benchmark model's shape). Timed end to end like `mmoe bench`:
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
        for expert in config["experts"]:
            if expert["type"] not in ("mlp", "dcnv2"):
                raise SystemExit(f"baseline covers mlp and dcnv2 experts, not {expert['type']}")

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
            if task.get("gate_inputs"):
                raise SystemExit("baseline covers gates over all of x0")
            w = torch.softmax(self.mlp(p + ".gate", x0, len(task.get("gate_hidden", [])) + 1, False), dim=1)
            m = (w.unsqueeze(2) * stacked).sum(dim=1)
            logits.append(self.mlp(p + ".tower", m, len(task.get("tower", [])) + 1, False))
        return torch.cat(logits, dim=1)


def time_calls(fn, iters, max_seconds):
    for _ in range(5):
        fn()
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
    args = ap.parse_args()
    config, tensors = read_mmoe(args.model)
    d = sum(i["dim"] for i in config["inputs"])
    device = torch.device("cuda")
    results = {}
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}; model {config['name']} (x0 width {d})")
    print(f"{'variant':<14} {'batch':>6} {'cand/s':>12} {'p50 us':>10} {'p99 us':>10}")
    for dtype_name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
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
        json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "results": results},
                  open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
