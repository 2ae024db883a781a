"""Builds the tables of experiments/RESULTS.md from the eval reports and
training logs that experiments/run.sh leaves in the results directory. The
tables go between the `<!-- tables -->` and `<!-- end tables -->` markers of
RESULTS.md; the prose around them is kept.
"""
import argparse
import json
from pathlib import Path

TASKS = ["click", "good_click", "save"]
VIEWS = ["related_pins", "search", "all"]


def load(results, label):
    return json.loads((results / f"{label}.json").read_text())


def auc(report, m, task, view):
    return report["models"][m]["metrics"][task][view]["auc"]


def delta(report, task, view, digits=4):
    c = report["comparison"][task][view]
    lo, hi = c["ci95"]
    star = " *" if lo > 0 or hi < 0 else ""
    return f"{c['delta']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]{star}"


def model_table(rows, header, digits=4):
    """rows: (name, report, model index); one AUC column per task × view."""
    cols = [(t, v) for t in TASKS for v in VIEWS]
    out = [f"| {header} | " + " | ".join(f"{t} {v.replace('related_pins', 'rel. pins')}" for t, v in cols) + " |",
           "|---|" + "---:|" * len(cols)]
    for name, report, m in rows:
        out.append(f"| {name} | " + " | ".join(f"{auc(report, m, t, v):.{digits}f}" for t, v in cols) + " |")
    return "\n".join(out)


def delta_table(rows, header, digits=4):
    """rows: (name, report); ΔAUC of B − A with its 95% interval, per task × view."""
    out = [f"| {header} | task | " + " | ".join(VIEWS) + " |", "|---|---|" + "---:|" * len(VIEWS)]
    for name, report in rows:
        for t in TASKS:
            out.append(f"| {name} | {t} | " + " | ".join(delta(report, t, v, digits) for v in VIEWS) + " |")
    return "\n".join(out)


def training_table(results, names):
    out = ["| model | rows | parameters (dense / embeddings) | seconds | rows/s |", "|---|---:|---:|---:|---:|"]
    for name in names:
        path = results / f"train-{name}.json"
        if not path.exists():
            continue
        j = json.loads(path.read_text())
        run = j["runs"][-1]
        seconds = sum(e["seconds"] for r in j["runs"] for e in r["epochs"])
        rows = sum(r["rows"] for r in j["runs"])
        p = j.get("parameters", {})
        out.append(f"| {name} | {rows:,} | {p.get('dense', 0):,} / {p.get('embedding', 0):,} | {seconds:.0f} | {rows / seconds:,.0f} |")
    return "\n".join(out)


def retention(s, results, r, title):
    full_none = load(results, f"{r}-full-vs-none")
    none_pw = load(results, f"{r}-none-vs-pointwise")
    none_pair = load(results, f"{r}-none-vs-pairwise")
    none_pair_small = load(results, f"{r}-none-vs-pairwise-0.1")
    teacher_full = load(results, f"{r}-teacher-vs-full")
    s.append(f"\n{title}\n")
    s.append(model_table([
        ("teacher (mmoe-large, days 0–59)", teacher_full, 0),
        ("mmoe, days 0–59 (no expiry)", full_none, 0),
        ("student, no distillation", full_none, 1),
        ("student, pointwise (BCE on teacher p)", none_pw, 1),
        ("student, pairwise (λ = 1)", none_pair, 1),
        ("student, pairwise (λ = 0.1)", none_pair_small, 1),
    ], "model (AUC)"))
    s.append("\nWhat expiry took (A = mmoe on days 0–59, B = student without distillation):\n")
    s.append(delta_table([("no distillation", full_none)], "B"))
    s.append("\nWhat distillation recovers (A = student without distillation):\n")
    s.append(delta_table([("pointwise", none_pw), ("pairwise (λ = 1)", none_pair),
                          ("pairwise (λ = 0.1)", none_pair_small)], "B"))
    s.append("\nDistilled students against the model that kept all the data (A = mmoe on days 0–59):\n")
    s.append(delta_table([("pointwise", load(results, f"{r}-full-vs-pointwise")),
                          ("pairwise", load(results, f"{r}-full-vs-pairwise"))], "B"))
    s.append("\nThe teacher against the same-size model on the same days (A = teacher, B = mmoe on days 0–59):\n")
    s.append(delta_table([("mmoe", teacher_full)], "B"))


def compress_plots(results):
    """`mmoe eval` draws RGB PNGs of about 1 MB; 64 colours keep them legible at 1/20 the size."""
    try:
        from PIL import Image
    except ImportError:
        return
    for png in results.glob("*.png"):
        if png.stat().st_size > 200_000:
            Image.open(png).convert("RGB").quantize(64).save(png, optimize=True)


def experiment_1(s, results):
    s.append("\n### 1. Shared-bottom DCNv2, deeper DCNv2s, MMoE (evaluated on days 60–64)\n")
    base = [("dcn-shared", load(results, "1-dcn-shared-vs-dcn-deep"), 0)]
    others = [(b, load(results, f"1-dcn-shared-vs-{b}"), 1) for b in ["dcn-deep", "dcn-deeper", "mmoe", "mmoe-large"]]
    gates = load(results, "1-light-vs-mlp-gates")
    s.append(model_table(base + others + [("mmoe-mlp-gates", gates, 1)], "model (AUC)"))
    s.append("\nAgainst the shared-bottom DCNv2 (A = dcn-shared):\n")
    s.append(delta_table([(f"{b}", r) for b, r, _ in others], "B"))
    s.append("\nLight (linear) gates against MLP gates (A = mmoe, B = mmoe-mlp-gates):\n")
    s.append(delta_table([("mmoe-mlp-gates", gates)], "B"))
    s.append("\nTraining (one epoch on days 0–59):\n")
    s.append(training_table(results, ["dcn-shared", "dcn-deep", "dcn-deeper", "mmoe", "mmoe-large", "mmoe-mlp-gates"]))


def experiment_2(s, results):
    retention(s, results, "2", "### 2. Retention: teacher on days 0–59, students on days 30–59 (evaluated on days 60–64)")


def experiment_2s(s, results):
    retention(s, results, "2s", "### 2s. Retention in a stationary world (`--drift 0`), same protocol")


def experiment_3(s, results):
    s.append("\n### 3. Incremental training, one day at a time (each day's model evaluated on the next day)\n")
    rows = ["| trained through day | eval day | task | frozen batch model | incremental | incremental + distillation | Δ incremental − frozen | Δ distillation − plain |",
            "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for d in range(60, 65):
        fp = load(results, f"3-day-{d}-frozen-vs-plain")
        pd = load(results, f"3-day-{d}-plain-vs-distill")
        for t in TASKS:
            rows.append(f"| {d} | {d + 1} | {t} | {auc(fp, 0, t, 'all'):.4f} | {auc(fp, 1, t, 'all'):.4f} | "
                        f"{auc(pd, 1, t, 'all'):.4f} | {delta(fp, t, 'all')} | {delta(pd, t, 'all')} |")
    s.append("\n".join(rows))


def experiment_4(s, results):
    s.append("\n### 4. Precision: the teacher packed f32 against fp16 (evaluated on days 60–64)\n")
    reports = {mode: load(results, f"4-f32-vs-f16-{mode}") for mode in ["exact", "bf16"]}
    s.append(model_table([("f32 file, exact", reports["exact"], 0), ("fp16 file, exact", reports["exact"], 1),
                          ("f32 file, bf16", reports["bf16"], 0), ("fp16 file, bf16", reports["bf16"], 1)],
                         "file, CPU mode (AUC)", digits=6))
    s.append("\nfp16 file against f32 file, paired, in each CPU mode (A = f32 file):\n")
    s.append(delta_table([(f"fp16, {mode}", r) for mode, r in reports.items()], "B", digits=6))
    s.append("\nThe serving configuration against the reference (fp16 file in bf16 mode minus f32 file in "
             "exact mode; a difference of the AUCs above, not paired):\n")
    out = ["| task | " + " | ".join(VIEWS) + " |", "|---|" + "---:|" * len(VIEWS)]
    for t in TASKS:
        out.append(f"| {t} | " + " | ".join(
            f"{auc(reports['bf16'], 1, t, v) - auc(reports['exact'], 0, t, v):+.6f}" for v in VIEWS) + " |")
    s.append("\n".join(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--synth-log", required=True)
    ap.add_argument("--rows", required=True)
    ap.add_argument("--seed", required=True)
    ap.add_argument("--relatedness", required=True)
    ap.add_argument("--seconds", required=True)
    ap.add_argument("--out", default="experiments/RESULTS.md")
    a = ap.parse_args()
    results = Path(a.results)
    s = []
    s.append(f"Generated by `experiments/run.sh` (ROWS={a.rows}, SEED={a.seed}, RELATEDNESS={a.relatedness}) "
             f"on the development machine (2 cores). "
             "AUC differences are B − A with a 95% interval from 300 request-level paired bootstrap "
             "replicates (`mmoe eval`); `*` marks an interval that excludes 0.")
    s.append("\nSynthetic data (`mmoe synth`):\n\n```\n" + Path(a.synth_log).read_text().strip() + "\n```")

    for section in (experiment_1, experiment_2, experiment_2s, experiment_3, experiment_4):
        part = []
        try:
            section(part, results)
        except FileNotFoundError as e:
            # A section that was not run (EXPERIMENTS) is left out.
            print(f"{section.__name__}: left out ({Path(e.filename).name} is missing)")
            continue
        s.extend(part)

    compress_plots(results)
    tables = "\n".join(s) + "\n"
    out = Path(a.out)
    begin, end = "<!-- tables -->", "<!-- end tables -->"
    text = out.read_text() if out.exists() else f"# Experiments\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    out.write_text(f"{head}{begin}\n{tables}{end}{tail}")
    print(f"wrote the tables into {out}")


if __name__ == "__main__":
    main()
