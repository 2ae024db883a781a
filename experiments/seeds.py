"""A table of the main comparisons' ΔAUC (all rows, with 95% intervals)
across training seeds: one results directory of experiments/run.sh per seed.

    seeds.py --results experiments/results --results experiments/results-seed2 [--out RESULTS.md]

With --out, the table goes between the `<!-- seeds -->` and
`<!-- end seeds -->` markers of that file.
"""
import argparse
import json
from pathlib import Path

from report import delta  # experiments/report.py, beside this script

TASKS = ["click", "good_click", "save"]
COMPARISONS = [
    ("1-dcn-shared-vs-dcn-deep", "1: dcn-deep − dcn-shared"),
    ("1-dcn-shared-vs-dcn-deeper", "1: dcn-deeper − dcn-shared"),
    ("1-dcn-shared-vs-mmoe", "1: mmoe − dcn-shared"),
    ("1-dcn-shared-vs-mmoe-large", "1: mmoe-large − dcn-shared"),
    ("1-light-vs-mlp-gates", "1: MLP gates − light gates"),
    ("2-full-vs-none", "2: student − mmoe on all days"),
    ("2-none-vs-pointwise", "2: pointwise − no distillation"),
    ("2-none-vs-pairwise", "2: pairwise (λ = 1) − no distillation"),
    ("2s-full-vs-none", "2s (stationary): student − mmoe on all days"),
    ("2s-none-vs-pointwise", "2s (stationary): pointwise − no distillation"),
    ("2s-full-vs-pointwise", "2s (stationary): pointwise − mmoe on all days"),
    ("3-day-62-frozen-vs-plain", "3: day 62, incremental − frozen"),
    ("3-day-62-plain-vs-distill", "3: day 62, distillation − plain"),
    ("3-day-64-plain-vs-distill", "3: day 64, distillation − plain"),
]


def cell(report, task):
    return delta(report, task, "all")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", action="append", required=True)
    ap.add_argument("--out")
    a = ap.parse_args()
    dirs = [Path(d) for d in a.results]
    seeds = []
    for d in dirs:
        train = json.loads(next(d.glob("train-*.json")).read_text())
        seeds.append(train["options"]["seed"])
    lines = ["| comparison (all rows) | task | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|" + "---:|" * len(seeds)]
    for label, title in COMPARISONS:
        reports = []
        for d in dirs:
            path = d / f"{label}.json"
            reports.append(json.loads(path.read_text()) if path.exists() else None)
        if any(r is None for r in reports):
            continue
        for t in TASKS:
            lines.append(f"| {title} | {t} | " + " | ".join(cell(r, t) for r in reports) + " |")
    table = "\n".join(lines) + "\n"
    if not a.out:
        print(table)
        return
    out = Path(a.out)
    text = out.read_text()
    begin, end = "<!-- seeds -->", "<!-- end seeds -->"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    out.write_text(f"{head}{begin}\n{table}{end}{tail}")
    print(f"wrote the seed table into {out}")


if __name__ == "__main__":
    main()
