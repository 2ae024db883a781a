"""The engine against PyTorch: train in torch, export, pack, serve, compare.

The path a training team takes: a PyTorch module of MODEL.md
(``mmoe_torch.py``) is built from a random config of ``gen_random_model.py``,
initialised by torch's own initialisers, trained a few Adam steps on random
labels, and its ``state_dict()`` written to safetensors as is. Then
``mmoe pack`` (f32 and f16 files) and ``mmoe score`` run on the generated
requests, and each logit is compared with the module's forward pass in
float64 (over the fp16-rounded parameters for the f16 file):
|dlogit| <= 1e-4 * (1 + |logit_torch|), |dprob| <= 1e-5.

Checked on the way: the module's state_dict names and shapes are exactly the
contract's (the generator's tensor set), so a torch module written the usual
way exports without renaming.

    python3 tests/python/test_torch_parity.py --mmoe target/release/mmoe --seeds 40

The test command also runs it on the GPU path run on the host
(``--scorer target/release/mmoe-gpu-emu --score-args "--precision f16"``),
and the GPU check on the GPU path (``--score-args "--device cuda
--precision f16" --logit-rtol 2e-2 --prob-atol 5e-3``: the bounds of fp16
compute).

Needs torch and numpy (Debian: ``apt-get install python3-torch``; run it with
that Python, ``/usr/bin/python3``).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import math
import shutil
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

try:
    import numpy as np
    import torch
except ImportError as err:  # pragma: no cover - environment problem, said plainly
    sys.exit(f"error: {err.name} is required (Debian: apt-get install python3-torch; run with /usr/bin/python3)")

import gen_random_model as gen  # noqa: E402  (configs and requests; numpy only)
import mmoe_ref  # noqa: E402  (only its safetensors writer)
import test_parity  # noqa: E402  (running commands and comparing outputs)
import mmoe_torch  # noqa: E402

LOGIT_RTOL = 1e-4
PROB_ATOL = 1e-5
TRAIN_STEPS = 8


def hints(config: dict, tensors: dict) -> tuple[dict, dict]:
    """What the config leaves open, read off the generator's tensor set:
    learned FinalMLP context shapes and whether a one-expert task has a gate."""
    ctx_shapes = {}
    for ex in config["experts"]:
        if ex["type"] == "finalmlp":
            shapes = {}
            for s in (1, 2):
                name = f"experts.{ex['name']}.fs{s}.ctx_bias"
                if name in tensors:
                    shapes[s] = tuple(tensors[name].shape)
            ctx_shapes[ex["name"]] = shapes
    has_gate = {t["name"]: any(k.startswith(f"tasks.{t['name']}.gate.") for k in tensors) for t in config["tasks"]}
    return ctx_shapes, has_gate


def name_problems(model: torch.nn.Module, tensors: dict) -> list:
    """Differences between the module's state_dict and the contract's tensor set."""
    state = model.state_dict()
    problems = [f"tensor {k}: in the contract, not in the torch module" for k in sorted(set(tensors) - set(state))]
    problems += [f"tensor {k}: in the torch module, not in the contract" for k in sorted(set(state) - set(tensors))]
    for k in sorted(set(state) & set(tensors)):
        if tuple(state[k].shape) != tuple(tensors[k].shape):
            problems.append(f"tensor {k}: torch shape {tuple(state[k].shape)}, contract {tuple(tensors[k].shape)}")
    return problems


def build_and_train(seed: int, config: dict, tensors: dict, requests: list) -> mmoe_torch.MmoeModel:
    torch.manual_seed(seed)
    ctx_shapes, has_gate = hints(config, tensors)
    model = mmoe_torch.MmoeModel(config, ctx_shapes, has_gate)
    with torch.no_grad():  # data statistics come with the data, not from training
        for inp in config["inputs"]:
            for stat in ("mean", "std"):
                name = f"inputs.{inp['name']}.{stat}"
                if name in tensors:
                    getattr(model.inputs[inp["name"]], stat).copy_(torch.from_numpy(tensors[name]))
    batches = [mmoe_torch.batch(config, r, torch.float32) for r in requests]
    labels = [torch.randint(0, 2, (n, len(config["tasks"]))).float() for _, _, n in batches]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(TRAIN_STEPS):
        for (dense, bags, n), y in zip(batches, labels):
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense, bags, n), y)
            loss.backward()
            optimizer.step()
    return model


def export(model: torch.nn.Module, path: Path) -> None:
    mmoe_ref.write_safetensors(str(path), {k: v.detach().numpy().astype(np.float32)
                                           for k, v in model.state_dict().items()})


def torch_scores(model: mmoe_torch.MmoeModel, config: dict, requests: list, round_f16: bool) -> list:
    """(logits, probabilities) per request, from the module in float64."""
    reference = copy.deepcopy(model).double()
    if round_f16:
        with torch.no_grad():
            for t in list(reference.parameters()) + list(reference.buffers()):
                t.copy_(t.half().double())
    with torch.no_grad():
        logits = [reference(*mmoe_torch.batch(config, r, torch.float64)).numpy() for r in requests]
    return [(x, 1.0 / (1.0 + np.exp(-x))) for x in logits]


def check_seed(binary: Path, scorer: Path, seed: int, directory: Path, score_args: list) -> tuple[list, dict]:
    config, tensors, requests = gen.generate(seed)
    model = build_and_train(seed, config, tensors, requests)
    problems = name_problems(model, tensors)
    if problems:
        return problems, {}
    (directory / "model.json").write_text(json.dumps(config))
    (directory / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    export(model, directory / "model.safetensors")
    deltas = {}
    for dtype in ("f32", "f16"):
        packed, scores = directory / f"{dtype}.mmoe", directory / f"{dtype}.jsonl"
        ok, failure = test_parity.run_command([str(binary), "pack", "--config", str(directory / "model.json"),
                                               "--weights", str(directory / "model.safetensors"),
                                               "--out", str(packed), "--dtype", dtype])
        if ok:
            ok, failure = test_parity.run_command([str(scorer), "score", "--model", str(packed), "--requests",
                                                   str(directory / "requests.jsonl"), "--out", str(scores)]
                                                  + score_args)
        if not ok:
            problems.append(f"[{dtype}] {failure}")
            deltas[dtype] = (math.inf, math.inf)
            continue
        wants = torch_scores(model, config, requests, dtype == "f16")
        found, worst, worst_relative = test_parity.compare_outputs(
            scores, wants, [t["name"] for t in config["tasks"]], LOGIT_RTOL, PROB_ATOL, source="torch")
        deltas[dtype] = (worst, worst_relative)
        problems += [f"[{dtype}] {p}" for p in found]
    return problems, deltas


def main(argv=None) -> int:
    global LOGIT_RTOL, PROB_ATOL
    ap = argparse.ArgumentParser(description="mmoe engine vs a PyTorch module of MODEL.md, trained and exported")
    ap.add_argument("--mmoe", required=True, help="path to the mmoe binary")
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep every seed's files (failing ones are always kept)")
    ap.add_argument("--scorer", help="the binary whose `score` runs (default: --mmoe; e.g. mmoe-gpu-emu, the GPU "
                    "path on the host)")
    ap.add_argument("--score-args", default="--backend cpu",
                    help="arguments of `mmoe score` after the files (default: %(default)s)")
    ap.add_argument("--logit-rtol", type=float, default=LOGIT_RTOL)
    ap.add_argument("--prob-atol", type=float, default=PROB_ATOL)
    args = ap.parse_args(argv)
    LOGIT_RTOL, PROB_ATOL = args.logit_rtol, args.prob_atol
    score_args = shlex.split(args.score_args)
    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="mmoe-torch-"))
    print(f"torch {torch.__version__}; {args.scorer or args.mmoe} score {' '.join(score_args)}; "
          f"bounds |dlogit| <= {LOGIT_RTOL:g}(1 + |logit|), |dprob| <= {PROB_ATOL:g}; work dir {workdir}")
    worst = {(dtype, kind): (0.0, None) for dtype in ("f32", "f16") for kind in (0, 1)}
    passed = failed = 0
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        directory = workdir / f"seed-{seed:04d}"
        directory.mkdir()
        try:
            problems, deltas = check_seed(Path(args.mmoe), Path(args.scorer or args.mmoe), seed, directory, score_args)
        except Exception as err:  # a harness or torch error fails the seed, said plainly
            problems, deltas = [f"harness error: {type(err).__name__}: {err}"], {}
        for dtype, pair in deltas.items():
            for kind, delta in enumerate(pair):
                if delta > worst[dtype, kind][0]:
                    worst[dtype, kind] = (delta, seed)
        if problems:
            failed += 1
            print(f"seed {seed} FAILED: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
            print(f"    model: {gen.describe(*gen.generate(seed)[:2])}")
            print(f"    files: {directory}")
        else:
            passed += 1
            if not args.keep:
                shutil.rmtree(directory, ignore_errors=True)
    for (dtype, kind), (delta, seed) in worst.items():
        what = "max |dlogit|" if kind == 0 else "max |dlogit|/(1+|logit|)"
        print(f"{what} {dtype} file: {delta:.3e}" + (f" (seed {seed})" if seed is not None else ""))
    print(f"{passed} passed, {failed} failed")
    if failed == 0 and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
