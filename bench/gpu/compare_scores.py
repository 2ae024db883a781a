#!/usr/bin/env python3
"""Compares `mmoe score` answers of two backends: prints the |Δlogit|
distribution over every logit of every file pair and fails past a bound.

    python3 compare_scores.py --bound 2e-2 --label f16 A1.jsonl B1.jsonl [A2.jsonl B2.jsonl ...]
"""
import argparse
import json
import sys

import numpy as np


def logits(path):
    rows = []
    for line in open(path):
        answer = json.loads(line)
        if "error" in answer:
            raise SystemExit(f"{path}: {answer['error']}")
        rows.extend(answer["logits"])
    return np.array(rows, dtype=np.float64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bound", type=float, required=True)
    ap.add_argument("--label", default="")
    ap.add_argument("--json")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    pairs = list(zip(args.files[0::2], args.files[1::2]))
    deltas = []
    worst = (0.0, None)
    for a, b in pairs:
        d = np.abs(logits(a) - logits(b)).ravel()
        deltas.append(d)
        if d.size and d.max() > worst[0]:
            worst = (float(d.max()), b)
    d = np.concatenate(deltas) if deltas else np.zeros(0)
    summary = {"label": args.label, "pairs": len(pairs), "logits": int(d.size),
               "max": float(d.max()) if d.size else 0.0, "p50": float(np.median(d)) if d.size else 0.0,
               "p99": float(np.quantile(d, 0.99)) if d.size else 0.0, "mean": float(d.mean()) if d.size else 0.0,
               "worst_file": worst[1], "bound": args.bound}
    print(f"{args.label}: {summary['pairs']} models, {summary['logits']} logits: |Δlogit| max {summary['max']:.3e} "
          f"p99 {summary['p99']:.3e} p50 {summary['p50']:.3e} (bound {args.bound:g})")
    if args.json:
        json.dump(summary, open(args.json, "w"), indent=1)
    ok = summary["max"] <= args.bound
    print(f"{1 if ok else 0} passed, {0 if ok else 1} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
