"""Checks `mmoe eval` against an independent computation with numpy.

Generates synthetic logs with `mmoe synth`, scores them with two models
through `mmoe score-dataset` (one logit column per task each), runs
`mmoe eval` on the same data, and recomputes from the scored Parquet files,
per task and view type: AUC (Mann–Whitney with average ranks), log loss and
calibration. They must agree to 1e-9 relative (the two sides sum in a
different order); the bootstrap interval must contain the AUC difference and
the flag must follow the 0.1% rule. Written without reading the Rust code's
metric functions: from the definitions in docs/DATASETS.md.

    python tests/python/test_metrics.py --mmoe target/release/mmoe \
        --model-a target/demo-a.mmoe --model-b target/demo-b.mmoe
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def average_ranks(x):
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def auc(scores, labels):
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores.astype(np.float64))
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def metrics(logits, labels):
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    pc = np.clip(p, 1e-7, 1 - 1e-7)
    loss = -np.mean(np.where(labels == 1, np.log(pc), np.log(1 - pc)))
    calibration = p.mean() / labels.mean() if labels.sum() > 0 else float("nan")
    return {"rows": len(labels), "positives": int(labels.sum()), "auc": auc(logits, labels),
            "log_loss": loss, "calibration": calibration}


def close(a, b, what):
    if a is None or b is None or not np.isfinite(b):
        assert (a is None) == (not np.isfinite(b)), f"{what}: {a} vs {b}"
        return
    assert abs(a - b) <= 1e-9 * max(1.0, abs(b)), f"{what}: mmoe {a!r}, numpy {b!r}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mmoe", required=True)
    ap.add_argument("--model-a", required=True)
    ap.add_argument("--model-b", required=True)
    ap.add_argument("--rows", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "synth.parquet"
        run = lambda *a: subprocess.run([args.mmoe, *a], check=True, capture_output=True, text=True)
        run("synth", "--model", args.model_a, "--rows", str(args.rows), "--out", str(data), "--seed", "3")
        scored = []
        for name, model in (("a", args.model_a), ("b", args.model_b)):
            out = tmp / f"scored-{name}.parquet"
            run("score-dataset", "--model", model, "--data", str(data), "--out", str(out))
            scored.append(pq.read_table(out))
        report_path = tmp / "eval.json"
        run("eval", "--model", args.model_a, "--model", args.model_b, "--data", str(data),
            "--json", str(report_path), "--plot", str(tmp / "eval.png"), "--bootstrap", "100")
        assert (tmp / "eval.png").stat().st_size > 10_000, "the plot is drawn"
        report = json.loads(report_path.read_text())

        table = scored[0]
        views = np.array(table.column("view").to_pylist())
        checked = 0
        for m, model in enumerate(report["models"]):
            columns = [c for c in scored[m].column_names if c.startswith("logit.")]
            for task, per_view in model["metrics"].items():
                labels = np.array(table.column(f"label.{task}").to_numpy(), dtype=np.int64)
                column = [c for c in columns if c.endswith("." + task)][0]
                logits = np.array(scored[m].column(column).to_numpy(), dtype=np.float32)
                for view, got in per_view.items():
                    rows = np.ones(len(views), bool) if view == "all" else views == view
                    want = metrics(logits[rows], labels[rows])
                    assert got["rows"] == want["rows"] and got["positives"] == want["positives"], (task, view)
                    for key in ("auc", "log_loss", "calibration"):
                        close(got[key], want[key], f"model {m} {task} {view} {key}")
                    checked += 1
        for task, per_view in report["comparison"].items():
            for view, c in per_view.items():
                a = report["models"][0]["metrics"][task][view]["auc"]
                b = report["models"][1]["metrics"][task][view]["auc"]
                close(c["delta"], b - a, f"delta {task} {view}")
                lo, hi = c["ci95"]
                assert lo <= c["delta"] <= hi, f"{task} {view}: {c['delta']} outside [{lo}, {hi}]"
                assert c["flag"] == (abs(c["delta"] / a) >= 0.001), (task, view, c)
        # --days keeps the rows of those days only.
        days_path = tmp / "eval-days.json"
        run("eval", "--model", args.model_a, "--data", str(data), "--days", "10..30",
            "--json", str(days_path), "--plot", str(tmp / "eval-days.png"))
        days_report = json.loads(days_path.read_text())
        day = table.column("day").to_numpy()
        in_days = (day >= 10) & (day < 30)
        assert 0 < in_days.sum() < len(day)
        assert days_report["evaluated_rows"] == int(in_days.sum()), days_report["evaluated_rows"]
        column = [c for c in scored[0].column_names if c.startswith("logit.")][0]
        task = column.split(".")[-1]
        labels = np.array(table.column(f"label.{task}").to_numpy(), dtype=np.int64)
        logits = np.array(scored[0].column(column).to_numpy(), dtype=np.float32)
        want = metrics(logits[in_days], labels[in_days])
        close(days_report["models"][0]["metrics"][task]["all"]["auc"], want["auc"], "--days auc")
        print(f"metrics: {checked} (model, task, view) cells match numpy; bootstrap intervals contain the deltas; --days selects its rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
