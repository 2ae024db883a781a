"""Parity of the mmoe engine against the independent numpy reference.

Run as a script (no pytest needed)::

    python3 tests/python/test_parity.py --mmoe target/release/mmoe --seeds 200 [--workdir DIR]

or collect with pytest (``MMOE_BIN`` and ``MMOE_PARITY_SEEDS`` select the
binary and the seed count; the parity test is skipped when no binary exists).

What it does:
1. Reference self-checks that need no binary (a hand-computed model, a
   dominant softmax gate, three formulations of FinalMLP's bilinear term,
   metamorphic checks on random models, safetensors round trips, errors).
2. For each seed: generate a random model (gen_random_model.py), write
   model.json / model.safetensors / requests.jsonl, run
   ``mmoe pack --dtype f32`` and ``--dtype f16``, ``mmoe score`` on both, and
   compare with the reference (float weights for f32, fp16-rounded weights for
   f16): |dlogit| <= 1e-4 * (1 + |logit_ref|), |dprob| <= 1e-5; the CPU's
   bf16 mode (backend ``cpu-bf16``) within its measured price,
   5e-2 * (1 + |logit_ref|) and 2e-2.
   Some seeds store tensors in the safetensors file as a mix of F32, F16 and
   BF16 (``--f32-only`` turns that off); the reference always reads back the
   very file the packer reads.
3. Prints failing seeds with a branch summary, the largest |dlogit| per packed
   dtype and backend, branch coverage counts, and finally ``N passed, M failed``.

Seeds run in worker processes, as many as ``--jobs`` (default: every core);
the report is in seed order and the same whatever the count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

try:
    import numpy as np
except ImportError:  # pragma: no cover - environment problem, said plainly
    sys.exit("error: numpy is required (python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install numpy)")

import gen_random_model as gen  # noqa: E402
import mmoe_ref as ref  # noqa: E402

LOGIT_RTOL = 1e-4
PROB_ATOL = 1e-5
COVERAGE_MIN_SEEDS = 40
FILE_DTYPE_BRANCHES = ("weights.file_dtype=F16", "weights.file_dtype=BF16")


# ==========================================================================
# Reference self-checks (no binary needed)
# ==========================================================================


def _linear_tensors(prefix: str, weight, bias) -> dict:
    return {f"{prefix}.weight": np.array(weight, dtype=np.float64), f"{prefix}.bias": np.array(bias, dtype=np.float64)}


def test_hand_computed_model():
    """One mlp expert, one task, two inputs; the logits worked out by hand."""
    config = {
        "name": "hand", "expert_dim": 2,
        "inputs": [
            {"name": "a", "kind": "dense", "scope": "candidate", "dim": 2,
             "transform": ["log1p", "standardize"], "clip": 1.0, "missing": "zero"},
            {"name": "b", "kind": "sparse", "scope": "candidate", "rows": 3, "dim": 1, "pooling": "mean"},
        ],
        "experts": [{"name": "m", "type": "mlp", "hidden": [2]}],
        "tasks": [{"name": "click", "gate_hidden": [], "tower": []}],
    }
    tensors = {
        "inputs.a.mean": np.array([0.5, 0.0]), "inputs.a.std": np.array([2.0, 0.5]),
        "inputs.b.embedding": np.array([[1.0], [2.0], [4.0]]),
        **_linear_tensors("experts.m.mlp.0", [[-1.0, -1.0, 0.5], [0.5, 2.0, -1.0]], [0.1, -0.2]),
        **_linear_tensors("tasks.click.tower.0", [[2.0, 3.0]], [-0.5]),
        # one expert: no gate tensors, w = [1]
    }
    request = {"n": 2,
               "dense": {"a": [[math.e - 1.0, 3.0], [-(math.exp(2.0) - 1.0), None]]},
               "sparse": {"b": [[(1 << 64) - 1, 5], []]}}

    # Candidate 0. a: log1p -> [1, ln 4]; standardize -> [(1-0.5)/2, ln4/0.5] = [0.25, 2.77];
    # clip 1 -> [0.25, 1]. b: ids 2^64-1 = 0 (mod 3) and 5 = 2 (mod 3) -> rows 0, 2 -> mean (1+4)/2.
    a0 = [min(max((1.0 - 0.5) / 2.0, -1.0), 1.0), min(max(math.log(4.0) / 0.5, -1.0), 1.0)]
    assert ((1 << 64) - 1) % 3 == 0
    x0_0 = a0 + [(1.0 + 4.0) / 2.0]                       # [0.25, 1.0, 2.5]
    # Candidate 1. a0: log1p(-(e^2-1)) = -2; (-2-0.5)/2 = -1.25; clip -> -1. a1 is null -> 0.
    # b: empty bag -> 0.
    x0_1 = [-1.0, 0.0, 0.0]
    logits = []
    for x in (x0_0, x0_1):
        h0 = max(-1.0 * x[0] - 1.0 * x[1] + 0.5 * x[2] + 0.1, 0.0)
        h1 = max(0.5 * x[0] + 2.0 * x[1] - 1.0 * x[2] - 0.2, 0.0)
        logits.append(2.0 * h0 + 3.0 * h1 - 0.5)
    # i.e. h = [0.1, 0] -> -0.3 and h = [1.1, 0] -> 1.7
    assert abs(logits[0] - (-0.3)) < 1e-12 and abs(logits[1] - 1.7) < 1e-12

    got_logits, got_probs = ref.forward(config, tensors, request)
    assert got_logits.shape == (2, 1)
    assert np.allclose(got_logits[:, 0], logits, rtol=0, atol=1e-12), got_logits
    assert np.allclose(got_probs[:, 0], [1 / (1 + math.exp(-v)) for v in logits], rtol=0, atol=1e-15)

    # The same model with "clip" listed in transform gives the same answer.
    config2 = json.loads(json.dumps(config))
    config2["inputs"][0]["transform"] = ["clip", "standardize", "log1p"]  # order in the list is irrelevant
    assert np.array_equal(ref.forward(config2, tensors, request)[0], got_logits)
    # Without "missing": "zero" the null is an error naming input and candidate.
    config3 = json.loads(json.dumps(config))
    del config3["inputs"][0]["missing"]
    _expect_error(lambda: ref.forward(config3, tensors, request), ["input a", "candidate 1"])


def test_dominant_gate():
    """Two experts, one gate logit dominating: the task's logit is that expert's tower output."""
    rng = np.random.default_rng(7)
    D, H = 5, 3
    config = {
        "name": "gate", "expert_dim": H,
        "inputs": [{"name": "x", "kind": "dense", "scope": "candidate", "dim": D}],
        "experts": [{"name": "e0", "type": "mlp", "hidden": [4, H]},
                    {"name": "e1", "type": "mlp", "hidden": [H]}],
        "tasks": [{"name": "click", "gate_hidden": [], "tower": [4]}],
    }
    t = {}
    t.update(_linear_tensors("experts.e0.mlp.0", rng.normal(size=(4, D)), rng.normal(size=4)))
    t.update(_linear_tensors("experts.e0.mlp.1", rng.normal(size=(H, 4)), rng.normal(size=H)))
    t.update(_linear_tensors("experts.e1.mlp.0", rng.normal(size=(H, D)), rng.normal(size=H)))
    t.update(_linear_tensors("tasks.click.tower.0", rng.normal(size=(4, H)), rng.normal(size=4)))
    t.update(_linear_tensors("tasks.click.tower.1", rng.normal(size=(1, 4)), rng.normal(size=1)))
    request = {"n": 4, "dense": {"x": rng.normal(size=(4, D)).tolist()}, "sparse": {}}

    for winner in (0, 1):
        gate = {**t, **_linear_tensors("tasks.click.gate.0", 0.01 * rng.normal(size=(2, D)),
                                       [60.0 if i == winner else 0.0 for i in range(2)])}
        mixed = ref.forward(config, gate, request)[0]
        # The winner alone: a one-expert model without a gate (w = [1]).
        solo_config = {**config, "experts": [config["experts"][winner]]}
        solo = {k: v for k, v in t.items() if not k.startswith(f"experts.e{1 - winner}.")}
        alone = ref.forward(solo_config, solo, request)[0]
        assert np.allclose(mixed, alone, rtol=1e-12, atol=1e-12), (mixed, alone)
        # ... and with the one-expert gate present, whatever its weights: softmax of one logit is 1.
        solo_gate = {**solo, **_linear_tensors("tasks.click.gate.0", rng.normal(size=(1, D)), [3.0])}
        assert np.array_equal(ref.forward(solo_config, solo_gate, request)[0], alone)
    # An even gate gives the average mixture (towers are nonlinear, so compare the mixture via a linear tower).
    lin_config = {**config, "tasks": [{"name": "click", "gate_hidden": [], "tower": []}]}
    lin = {k: v for k, v in t.items() if not k.startswith("tasks.")}
    lin.update(_linear_tensors("tasks.click.tower.0", rng.normal(size=(1, H)), [0.0]))
    even = {**lin, **_linear_tensors("tasks.click.gate.0", np.zeros((2, D)), [0.0, 0.0])}
    x0 = np.array(request["dense"]["x"])
    e0 = np.maximum(np.maximum(x0 @ t["experts.e0.mlp.0.weight"].T + t["experts.e0.mlp.0.bias"], 0)
                    @ t["experts.e0.mlp.1.weight"].T + t["experts.e0.mlp.1.bias"], 0)
    e1 = np.maximum(x0 @ t["experts.e1.mlp.0.weight"].T + t["experts.e1.mlp.0.bias"], 0)
    expected = (0.5 * e0 + 0.5 * e1) @ lin["tasks.click.tower.0.weight"].T
    assert np.allclose(ref.forward(lin_config, even, request)[0], expected, rtol=1e-12, atol=1e-12)


def _bilinear_triple_sum(o1, o2, w_flat, k, H):
    """MODEL.md's formula, literally: one candidate, explicit loops."""
    d1, d2 = len(o1), len(o2)
    hx, hy = d1 // k, d2 // k
    out = [0.0] * H
    for o in range(H):
        for h in range(k):
            for a in range(hx):
                for b in range(hy):
                    out[o] += o1[h * hx + a] * w_flat[(h * hx + a) * (hy * H) + o * hy + b] * o2[h * hy + b]
    return np.array(out)


def _bilinear_torch_style(o1, o2, w_xy, k, H):
    """The common PyTorch code path, in numpy: view w_xy as [k, hx, hy*H], the product as [k, H, hy]."""
    hx, hy = o1.shape[1] // k, o2.shape[1] // k
    n = o1.shape[0]
    head_x = o1.reshape(n, k, 1, hx)                          # [n, k, 1, hx]
    xw = np.matmul(head_x, w_xy.reshape(k, hx, hy * H))       # [n, k, 1, hy*H]
    xw = xw.reshape(n, k, H, hy)
    xy = np.matmul(xw, o2.reshape(n, k, hy, 1))[..., 0]       # [n, k, H]
    return xy.sum(axis=1)


def test_bilinear_formulations():
    rng = np.random.default_rng(3)
    for k, hx, hy, H in [(1, 1, 1, 1), (3, 2, 4, 5), (4, 3, 1, 2), (2, 5, 3, 7)]:
        n = 3
        o1 = rng.normal(size=(n, k * hx))
        o2 = rng.normal(size=(n, k * hy))
        w_xy = rng.normal(size=(k * hx * hy, H))
        fast = ref.bilinear_fusion(o1, o2, w_xy, k)
        torch_style = _bilinear_torch_style(o1, o2, w_xy, k, H)
        for i in range(n):
            loops = _bilinear_triple_sum(o1[i], o2[i], w_xy.reshape(-1), k, H)
            assert np.allclose(fast[i], loops, rtol=1e-12, atol=1e-12)
        assert np.allclose(fast, torch_style, rtol=1e-12, atol=1e-12)
        # Bilinear: scaling o1 by 2 and o2 by -3 scales the term by -6.
        assert np.allclose(ref.bilinear_fusion(2 * o1, -3 * o2, w_xy, k), -6 * fast, rtol=1e-12, atol=1e-12)


# --- A second, literal reading of MODEL.md: one candidate at a time, plain Python lists. ---
# It shares nothing with mmoe_ref's vectorized code but the tensors, so a transpose,
# broadcast or slicing slip in either one shows up as a mismatch.


def _lit_linear(t, prefix, x, bias=True):
    W = t[f"{prefix}.weight"]
    return [sum(W[o][i] * x[i] for i in range(len(x))) + (t[f"{prefix}.bias"][o] if bias else 0.0)
            for o in range(len(W))]


def _lit_relu(v):
    return [a if a > 0 else 0.0 for a in v]


def _lit_mlp(t, prefix, widths_count, x, relu_last):
    for j in range(widths_count):
        x = _lit_linear(t, f"{prefix}.{j}", x)
        if j < widths_count - 1 or relu_last:
            x = _lit_relu(x)
    return x


def _lit_ln(t, prefix, x):
    mean = sum(x) / len(x)
    var = sum((a - mean) ** 2 for a in x) / len(x)
    return [(a - mean) / math.sqrt(var + 1e-5) * g + b
            for a, g, b in zip(x, t[f"{prefix}.weight"], t[f"{prefix}.bias"])]


def _lit_sigmoid(a):
    return 1.0 / (1.0 + math.exp(-a)) if a >= 0 else math.exp(a) / (1.0 + math.exp(a))


def _lit_candidate_inputs(config, t, request, c):
    """{input name: its vector} for candidate c."""
    values = {}
    for inp in config["inputs"]:
        name = inp["name"]
        if inp["kind"] == "dense":
            raw = request["dense"][name] if inp["scope"] == "request" else request["dense"][name][c]
            transform = inp.get("transform") or []
            vec = []
            for e, v in enumerate(raw):
                if v is None or not math.isfinite(v):
                    assert inp.get("missing") == "zero"
                    vec.append(0.0)
                    continue
                if "log1p" in transform:
                    v = math.copysign(math.log1p(abs(v)), v)
                if "standardize" in transform:
                    v = (v - t[f"inputs.{name}.mean"][e]) / t[f"inputs.{name}.std"][e]
                if inp.get("clip") is not None:
                    v = min(max(v, -inp["clip"]), inp["clip"])
                vec.append(v)
        else:
            bag = request["sparse"][name][0] if inp["scope"] == "request" else request["sparse"][name][c]
            table = t[f"inputs.{name}.embedding"]
            vec = [0.0] * inp["dim"]
            for ident in bag:
                row = table[ident % inp["rows"]]
                vec = [a + b for a, b in zip(vec, row)]
            if bag and inp["pooling"] == "mean":
                vec = [a / len(bag) for a in vec]
        values[name] = vec
    return values


def _lit_concat(config, values, names):
    return [a for inp in config["inputs"] if inp["name"] in names for a in values[inp["name"]]]


def _lit_expert(config, t, ex, x0, values):
    p = f"experts.{ex['name']}"
    if ex["type"] == "mlp":
        return _lit_mlp(t, f"{p}.mlp", len(ex["hidden"]), x0, True)
    if ex["type"] == "dcnv2":
        x = x0
        for l in range(ex["cross_layers"]):
            q = f"{p}.cross.{l}"
            if ex.get("rank") is None:
                inner = _lit_linear(t, q, x)
            else:
                down = _lit_linear(t, f"{q}.down", x, bias=False)
                inner = [a + b for a, b in zip(_lit_linear(t, f"{q}.up", down, bias=False), t[f"{q}.bias"])]
            x = [x0[i] * inner[i] + x[i] for i in range(len(x0))]
        if ex["structure"] == "stacked":
            return _lit_mlp(t, f"{p}.deep", len(ex["deep"]), x, True)
        deep = _lit_mlp(t, f"{p}.deep", len(ex["deep"]), x0, True)
        return _lit_relu(_lit_linear(t, f"{p}.proj", x + deep))
    if ex["type"] == "masknet":
        v = _lit_ln(t, f"{p}.emb_ln", x0)
        outs = []
        for b in range(len(ex["blocks"])):
            q = f"{p}.blocks.{b}"
            z = v if (ex["mode"] == "parallel" or b == 0) else outs[-1]
            mask = _lit_linear(t, f"{q}.mask.1", _lit_relu(_lit_linear(t, f"{q}.mask.0", x0)))
            hidden = _lit_linear(t, f"{q}.hidden", [m * a for m, a in zip(mask, z)], bias=False)
            outs.append(_lit_relu(_lit_ln(t, f"{q}.ln", hidden)))
        result = [a for out in outs for a in out] if ex["mode"] == "parallel" else outs[-1]
        return _lit_mlp(t, f"{p}.head", len(ex["head"]), result, True) if ex.get("head") else result
    # finalmlp
    streams = []
    for s in (1, 2):
        if not ex.get("feature_selection"):
            streams.append(x0)
            continue
        names = ex.get(f"fs{s}_context") or []
        ctx = _lit_concat(config, values, names) if names else list(np.asarray(t[f"{p}.fs{s}.ctx_bias"]).reshape(-1))
        g = _lit_mlp(t, f"{p}.fs{s}.gate", len(ex.get("fs_hidden") or []) + 1, ctx, False)
        streams.append([a * 2.0 * _lit_sigmoid(b) for a, b in zip(x0, g)])
    o1 = _lit_mlp(t, f"{p}.mlp1", len(ex["mlp1"]), streams[0], True)
    o2 = _lit_mlp(t, f"{p}.mlp2", len(ex["mlp2"]), streams[1], True)
    H = config["expert_dim"]
    fused = _bilinear_triple_sum(o1, o2, list(np.asarray(t[f"{p}.agg.w_xy"]).reshape(-1)), ex["heads"], H)
    wx, wy = _lit_linear(t, f"{p}.agg.w_x", o1), _lit_linear(t, f"{p}.agg.w_y", o2)
    return [wx[o] + wy[o] + fused[o] for o in range(H)]


def literal_forward(config, tensors, request):
    """logits [N][T] as nested lists, one candidate at a time."""
    t = {name: np.asarray(v, dtype=np.float64).tolist() for name, v in tensors.items()}
    E = len(config["experts"])
    all_logits = []
    for c in range(request["n"]):
        values = _lit_candidate_inputs(config, t, request, c)
        x0 = _lit_concat(config, values, [inp["name"] for inp in config["inputs"]])
        experts = [_lit_expert(config, t, ex, x0, values) for ex in config["experts"]]
        logits = []
        for task in config["tasks"]:
            p = f"tasks.{task['name']}"
            if E == 1 and f"{p}.gate.0.weight" not in t:
                w = [1.0]
            else:
                g = x0 if task.get("gate_inputs") is None else _lit_concat(config, values, task["gate_inputs"])
                scores = _lit_mlp(t, f"{p}.gate", len(task.get("gate_hidden") or []) + 1, g, False)
                top = max(scores)
                w = [math.exp(s - top) for s in scores]
                w = [a / sum(w) for a in w]
            m = [sum(w[i] * experts[i][o] for i in range(E)) for o in range(config["expert_dim"])]
            logits.append(_lit_mlp(t, f"{p}.tower", len(task.get("tower") or []) + 1, m, False)[0])
        all_logits.append(logits)
    return all_logits


def test_literal_reading_agrees():
    """mmoe_ref.forward == the literal per-candidate reading, on generated models."""
    for seed in range(0, 200, 5):
        config, tensors, requests = gen.generate(seed)
        for req in requests:
            want = np.array(literal_forward(config, tensors, req))
            got = ref.forward(config, tensors, req)[0]
            assert np.allclose(got, want, rtol=1e-10, atol=1e-10), (seed, got, want)


def test_layer_norm_and_softmax():
    x = np.array([[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]])
    t = {"ln.weight": np.ones(3), "ln.bias": np.zeros(3)}
    y = ref.layer_norm(x, t, "ln")
    assert np.allclose(y.mean(axis=1), 0, atol=1e-12)
    var = ((x[0] - x[0].mean()) ** 2).mean()
    assert np.allclose(y[0], (x[0] - x[0].mean()) / math.sqrt(var + 1e-5), atol=1e-12)  # biased variance, eps 1e-5
    assert np.array_equal(y[1], np.zeros(3))  # constant row -> beta
    s = ref.softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    assert np.allclose(s, [[1.0, 0.0], [0.5, 0.5]])


def _to_candidate_scope(config, requests):
    """Every request-scope input rewritten as candidate scope (values repeated)."""
    config = json.loads(json.dumps(config))
    requests = json.loads(json.dumps(requests))
    for inp in config["inputs"]:
        if inp["scope"] != "request":
            continue
        inp["scope"] = "candidate"
        for req in requests:
            section = req["dense" if inp["kind"] == "dense" else "sparse"]
            value = section[inp["name"]]
            section[inp["name"]] = [value] * req["n"] if inp["kind"] == "dense" else value * req["n"]
    return config, requests


def test_metamorphic_random_models():
    """Invariances the contract implies, on generated models."""
    for seed in range(0, 60, 3):
        config, tensors, requests = gen.generate(seed)
        base = [ref.forward(config, tensors, req)[0] for req in requests]
        # request scope == candidate scope with the value repeated
        c2, r2 = _to_candidate_scope(config, requests)
        for req, want in zip(r2, base):
            assert np.allclose(ref.forward(c2, tensors, req)[0], want, rtol=1e-12, atol=1e-12), seed
        # permuting candidates permutes the outputs
        for req, want in zip(requests, base):
            perm = np.random.default_rng(seed).permutation(req["n"])
            permuted = json.loads(json.dumps(req))
            for inp in config["inputs"]:
                if inp["scope"] == "candidate":
                    section = permuted["dense" if inp["kind"] == "dense" else "sparse"]
                    section[inp["name"]] = [section[inp["name"]][i] for i in perm]
            assert np.allclose(ref.forward(config, tensors, permuted)[0], want[perm], rtol=1e-12, atol=1e-12)
        # ids only matter modulo rows
        reduced = json.loads(json.dumps(requests))
        for req in reduced:
            for inp in config["inputs"]:
                if inp["kind"] == "sparse":
                    req["sparse"][inp["name"]] = [[i % inp["rows"] for i in bag] for bag in req["sparse"][inp["name"]]]
        for req, want in zip(reduced, base):
            assert np.allclose(ref.forward(config, tensors, req)[0], want, rtol=1e-12, atol=1e-12)
        # the order of gate_inputs / fs contexts in the config does not matter (config order is used)
        c3 = json.loads(json.dumps(config))
        for task in c3["tasks"]:
            if task.get("gate_inputs"):
                task["gate_inputs"] = task["gate_inputs"][::-1]
        for ex in c3["experts"]:
            for key in ("fs1_context", "fs2_context"):
                if ex.get(key):
                    ex[key] = ex[key][::-1]
        for req, want in zip(requests, base):
            assert np.array_equal(ref.forward(c3, tensors, req)[0], want)


def test_missing_zero_means_transformed_zero():
    """A null equals the raw value whose transformed value is 0 (no clip, log1p + standardize)."""
    config = {"name": "mz", "expert_dim": 2,
              "inputs": [{"name": "u", "kind": "dense", "scope": "request", "dim": 2,
                          "transform": ["log1p", "standardize"], "missing": "zero"}],
              "experts": [{"name": "m", "type": "mlp", "hidden": [2]}],
              "tasks": [{"name": "click", "gate_hidden": [], "tower": []}]}
    mean = np.array([1.25, -0.75])
    tensors = {"inputs.u.mean": mean, "inputs.u.std": np.array([0.5, 2.0]),
               **_linear_tensors("experts.m.mlp.0", [[1.0, -2.0], [0.5, 1.0]], [0.3, 0.4]),
               **_linear_tensors("tasks.click.tower.0", [[1.5, -1.0]], [0.1])}
    zero_raw = [math.copysign(math.expm1(abs(m)), m) for m in mean]
    with_null = ref.forward(config, tensors, {"n": 1, "dense": {"u": [None, None]}, "sparse": {}})[0]
    with_raw = ref.forward(config, tensors, {"n": 1, "dense": {"u": zero_raw}, "sparse": {}})[0]
    assert np.allclose(with_null, with_raw, rtol=1e-12, atol=1e-12)


def _expect_error(fn, fragments):
    try:
        fn()
    except ref.ContractError as err:
        for fragment in fragments:
            assert fragment in str(err), (fragment, str(err))
        return
    raise AssertionError(f"expected a ContractError mentioning {fragments}")


def test_reference_errors():
    config, tensors, requests = gen.generate(5)
    name = sorted(tensors)[0]
    _expect_error(lambda: ref.forward(config, {k: v for k, v in tensors.items() if k != name}, requests[0]), [name, "missing"])
    _expect_error(lambda: ref.forward(config, {**tensors, "experts.bogus.weight": np.zeros(1)}, requests[0]), ["experts.bogus.weight"])
    _expect_error(lambda: ref.forward(config, {**tensors, name: np.zeros((7, 7, 7))}, requests[0]), [name, "shape"])
    missing_input = json.loads(json.dumps(requests[0]))
    first = config["inputs"][0]
    del missing_input["dense" if first["kind"] == "dense" else "sparse"][first["name"]]
    _expect_error(lambda: ref.forward(config, tensors, missing_input), [first["name"]])


def test_safetensors_round_trip():
    rng = np.random.default_rng(11)
    a32 = rng.normal(size=(3, 4)).astype(np.float32)
    a16 = rng.normal(size=(5,)).astype(np.float16)
    raw_bf = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5, 3.0e38], dtype=np.float32)
    bf = ref.to_bf16(raw_bf)
    # ties to even: 1 + 2^-8 -> 1.0; 1 + 3*2^-8 -> 1 + 2^-6
    assert np.array_equal(ref.bf16_values(bf)[:4], [1.0, 1.0, 1.0 + 2 ** -6, -2.5])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.safetensors")
        ref.write_safetensors(path, {"b.x": a32, "a.y": a16, "c.z": bf}, metadata={"format": "pt"})
        back = ref.load_safetensors(path)
        assert set(back) == {"a.y", "b.x", "c.z"}
        assert np.array_equal(back["b.x"], a32.astype(np.float64)) and back["b.x"].shape == (3, 4)
        assert np.array_equal(back["a.y"], a16.astype(np.float64))
        assert np.array_equal(back["c.z"], ref.bf16_values(bf))
        with open(path, "rb") as f:
            blob = f.read()
        header_len = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + header_len])
        assert header["__metadata__"] == {"format": "pt"}
        assert [header[k]["dtype"] for k in ("a.y", "b.x", "c.z")] == ["F16", "F32", "BF16"]
        assert header["a.y"]["data_offsets"] == [0, 10]  # sorted by name, contiguous
    # fp16 rounding refuses values that do not fit
    _expect_error(lambda: ref.round_f16({"big": np.array([70000.0])}), ["big"])
    assert ref.round_f16({"x": np.array([65504.0, 1e-8])})["x"][0] == 65504.0


SELF_CHECKS = [
    test_hand_computed_model,
    test_dominant_gate,
    test_bilinear_formulations,
    test_literal_reading_agrees,
    test_layer_norm_and_softmax,
    test_missing_zero_means_transformed_zero,
    test_metamorphic_random_models,
    test_reference_errors,
    test_safetensors_round_trip,
]


def run_self_checks() -> bool:
    ok = True
    for check in SELF_CHECKS:
        try:
            check()
            print(f"selfcheck {check.__name__}: ok")
        except Exception as err:  # report every failing check, not just the first
            ok = False
            print(f"selfcheck {check.__name__}: FAILED: {type(err).__name__}: {err}")
    return ok


# ==========================================================================
# Parity against the binary
# ==========================================================================


def find_binary(given: str | None) -> Path | None:
    candidates = [given] if given else [os.environ.get("MMOE_BIN"),
                                         str(REPO_ROOT / "target" / "release" / "mmoe"),
                                         str(REPO_ROOT / "target" / "debug" / "mmoe")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return Path(c).resolve()
    return None


def storage_tensors(seed: int, tensors: dict, f32_only: bool) -> tuple[dict, set]:
    """What goes into model.safetensors: F32, or for every 4th seed a mix of F32/F16/BF16."""
    if f32_only or seed % 4 != 3:
        return tensors, set()
    rng = np.random.default_rng(10_000 + seed)
    stored, labels = {}, set()
    for name in sorted(tensors):
        choice = int(rng.integers(0, 3))
        if choice == 1:
            stored[name] = tensors[name].astype(np.float16)
            labels.add("weights.file_dtype=F16")
        elif choice == 2:
            stored[name] = ref.to_bf16(tensors[name])
            labels.add("weights.file_dtype=BF16")
        else:
            stored[name] = tensors[name]
    return stored, labels


def run_command(cmd: list, timeout: float = 300) -> tuple[bool, str]:
    try:
        env = {**os.environ, "MMOE_CPU_BF16": "always"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout}s: {' '.join(cmd)}"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return False, f"exit {proc.returncode}: {' '.join(cmd)}: " + " | ".join(tail)
    return True, ""


def compare(engine_path: Path, config: dict, tensors: dict, requests: list,
            logit_rtol: float = LOGIT_RTOL, prob_atol: float = PROB_ATOL) -> tuple[list, float]:
    """(problems, max |dlogit|) of an engine output file against the reference."""
    wants = [ref.forward(config, tensors, req) for req in requests]
    problems, max_delta, _ = compare_outputs(engine_path, wants, [t["name"] for t in config["tasks"]],
                                             logit_rtol, prob_atol)
    return problems, max_delta


def compare_outputs(engine_path: Path, wants: list, task_names: list, logit_rtol: float, prob_atol: float,
                    source: str = "reference") -> tuple[list, float, float]:
    """(problems, max |dlogit|, max |dlogit| / (1 + |logit|)) of an engine
    output file against `wants`, one (logits, probabilities) per request,
    computed by `source` (named in the problems)."""
    problems: list[str] = []
    max_delta = max_relative = 0.0
    lines = [line for line in engine_path.read_text().splitlines() if line.strip()]
    if len(lines) != len(wants):
        return [f"{len(lines)} output lines for {len(wants)} requests"], math.inf, math.inf
    for r, (line, (want_logits, want_probs)) in enumerate(zip(lines, wants)):
        try:
            got = json.loads(line)
            got_logits = np.array(got["logits"], dtype=np.float64)
            got_probs = np.array(got["probabilities"], dtype=np.float64)
        except (ValueError, KeyError, TypeError) as err:
            problems.append(f"request {r}: unreadable output line ({err})")
            max_delta = max_relative = math.inf
            continue
        if got_logits.shape != want_logits.shape or got_probs.shape != want_probs.shape:
            problems.append(f"request {r}: shapes {got_logits.shape}/{got_probs.shape}, expected {want_logits.shape}")
            max_delta = max_relative = math.inf
            continue
        delta = np.abs(got_logits - want_logits)
        if not np.all(np.isfinite(delta)):
            max_delta = max_relative = math.inf
        elif delta.size:
            max_delta = max(max_delta, float(delta.max()))
            max_relative = max(max_relative, float((delta / (1.0 + np.abs(want_logits))).max()))
        bad = ~(delta <= logit_rtol * (1.0 + np.abs(want_logits)))
        if bad.any():
            i, t = np.argwhere(bad)[0]
            problems.append(f"request {r} candidate {i} task {task_names[t]}: logit {float(got_logits[i, t])!r} "
                            f"vs {source} {float(want_logits[i, t])!r} ({int(bad.sum())} bad)")
        bad_p = ~(np.abs(got_probs - want_probs) <= prob_atol)
        if bad_p.any():
            i, t = np.argwhere(bad_p)[0]
            problems.append(f"request {r} candidate {i} task {task_names[t]}: "
                            f"probability {float(got_probs[i, t])!r} vs {source} {float(want_probs[i, t])!r}")
    return problems, max_delta, max_relative


BACKENDS = ("reference", "cpu")

# The GPU path run on the host (gpu-emu/, `--emu PATH`): backends named
# emu-<f32|f16>[-fused][-wide][-f32x][-f32v] (task heads fused in one
# launch; 128×128 tiles at every bucket; GEMMs converting f32 activations
# instead of reading fp16 copies; candidate values uploaded as f32 instead
# of fp16). fp16 compute rounds activations: the GPU check's bound.
EMU_BINARY: Path | None = None
# The CPU's bf16 mode (`--mode bf16`: x and W rounded to bf16, products
# summed in fp32; exact where the CPU lacks AVX512-BF16, or where its bf16
# dot products are not faster than fp32 FMAs unless MMOE_CPU_BF16=always,
# which `run_command` sets so that the kernel is checked wherever it runs).
# Measured on 200 random models (2026-11-28): at most 3.2e-2·(1 + |logit|)
# and 1.2e-2 in probability; the bounds leave half as much again.
BF16_LOGIT_RTOL = 5e-2
BF16_PROB_ATOL = 2e-2
EMU_F16_LOGIT_RTOL = 2e-2
EMU_F16_PROB_ATOL = 5e-3


def score_command(binary: Path, backend: str, packed: Path, requests: Path, out: Path):
    """The command that scores with `backend`, and its (logit rtol, probability atol)."""
    if backend == "cpu-bf16":
        return ([str(binary), "score", "--model", str(packed), "--backend", "cpu", "--mode", "bf16",
                 "--requests", str(requests), "--out", str(out)], BF16_LOGIT_RTOL, BF16_PROB_ATOL)
    if not backend.startswith("emu-"):
        return ([str(binary), "score", "--model", str(packed), "--backend", backend,
                 "--requests", str(requests), "--out", str(out)], LOGIT_RTOL, PROB_ATOL)
    if EMU_BINARY is None:
        raise ValueError(f"backend {backend} needs --emu PATH")
    parts = backend.split("-")[1:]
    cmd = [str(EMU_BINARY), "score", "--model", str(packed), "--requests", str(requests), "--out", str(out),
           "--precision", parts[0]]
    cmd += ["--fused-heads"] if "fused" in parts else []
    cmd += ["--wide-tiles"] if "wide" in parts else []
    cmd += ["--f32-inputs"] if "f32x" in parts else []
    cmd += ["--f32-values"] if "f32v" in parts else []
    cmd += ["--fused-norm"] if "fnorm" in parts else []
    cmd += ["--fused-logit"] if "flogit" in parts else []
    if parts[0] == "f16":
        return cmd, EMU_F16_LOGIT_RTOL, EMU_F16_PROB_ATOL
    return cmd, LOGIT_RTOL, PROB_ATOL


def check_seed(binary: Path, seed: int, directory: Path, f32_only: bool,
               backends=BACKENDS) -> tuple[list, dict, set, str]:
    """Run one seed. Returns (problems, {"<dtype> <backend>": max |dlogit|}, branches, description)."""
    config, tensors, requests = gen.generate(seed)
    stored, file_labels = storage_tensors(seed, tensors, f32_only)
    gen.write_model(str(directory), config, stored, requests)
    covered = gen.branches(config, tensors, requests) | file_labels
    description = gen.describe(config, tensors)
    # The reference reads the very file the packer reads.
    file_tensors = ref.load_safetensors(str(directory / "model.safetensors"))
    problems: list[str] = []
    deltas: dict[str, float] = {}
    for dtype in ("f32", "f16"):
        packed = directory / f"m{dtype[1:]}.mmoe"
        scores = directory / f"s{dtype[1:]}.jsonl"
        ok, msg = run_command([str(binary), "pack", "--config", str(directory / "model.json"),
                        "--weights", str(directory / "model.safetensors"), "--out", str(packed), "--dtype", dtype])
        if not ok:
            problems.append(f"[{dtype}] {msg}")
            deltas.update({f"{dtype} {backend}": math.inf for backend in backends})
            continue
        weights = file_tensors if dtype == "f32" else ref.round_f16(file_tensors)
        # Every engine backend is compared with the reference on the same file.
        for backend in backends:
            cmd, logit_rtol, prob_atol = score_command(binary, backend, packed, directory / "requests.jsonl", scores)
            ok, msg = run_command(cmd)
            if not ok:
                problems.append(f"[{dtype} {backend}] {msg}")
                deltas[f"{dtype} {backend}"] = math.inf
                continue
            found, deltas[f"{dtype} {backend}"] = compare(scores, config, weights, requests, logit_rtol, prob_atol)
            problems.extend(f"[{dtype} {backend}] {p}" for p in found)
    return problems, deltas, covered, description


def run_seed(run: tuple) -> tuple[list, dict, set, str]:
    """One seed of `run_parity` (a worker's task): its problems, worst
    |dlogit| per key, covered branches and model description."""
    binary, seed, directory, f32_only, backends = run
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return check_seed(binary, seed, directory, f32_only, backends)
    except Exception as err:  # a reference or harness crash is a failure of this seed, said plainly
        return [f"harness error: {type(err).__name__}: {err}"], {}, set(), "?"


def report_seed(seed: int, directory: Path, result: tuple, keep: bool, coverage: Counter, worst: dict,
                failed: int, passed: int) -> tuple[int, int]:
    """Folds one seed's result into the counts; prints it if it failed."""
    problems, deltas, covered, description = result
    coverage.update(covered)
    for key, delta in deltas.items():
        if delta > worst[key][0] or (math.isinf(delta) and worst[key][1] is None):
            worst[key] = (delta, seed)
    if problems:
        print(f"seed {seed} FAILED: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
        for extra in problems[1:4]:
            print(f"    also: {extra}")
        print(f"    model: {description}")
        print(f"    files: {directory}")
        return failed + 1, passed
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)
    return failed, passed + 1


def run_parity(binary: Path, seeds: list, workdir: Path, keep: bool, f32_only: bool,
               backends=BACKENDS, jobs: int = 1) -> bool:
    coverage: Counter = Counter()
    worst = {f"{dtype} {backend}": (0.0, None) for dtype in ("f32", "f16") for backend in backends}
    passed, failed = 0, 0
    runs = [(binary, seed, workdir / f"seed-{seed:04d}", f32_only, backends) for seed in seeds]
    # Seeds are independent: with several jobs they run in worker processes
    # (forked, so they see this module's settings), reported in seed order.
    with ProcessPoolExecutor(max_workers=jobs) if jobs > 1 else nullcontext() as pool:
        results = pool.map(run_seed, runs) if pool else map(run_seed, runs)
        for (_, seed, directory, _, _), result in zip(runs, results):
            failed, passed = report_seed(seed, directory, result, keep, coverage, worst, failed, passed)

    for key, (delta, seed) in worst.items():
        print(f"max |dlogit| {key}: {delta:.3e}" + (f" (seed {seed})" if seed is not None else ""))
    required = list(gen.REQUIRED_BRANCHES) + ([] if f32_only else list(FILE_DTYPE_BRANCHES))
    print("coverage (models exercising each branch):")
    for branch in required:
        print(f"  {coverage[branch]:5d}  {branch}")
    uncovered = [b for b in required if coverage[b] == 0]
    coverage_ok = True
    if uncovered:
        msg = f"{len(uncovered)} branches not covered: {', '.join(uncovered)}"
        if len(seeds) >= COVERAGE_MIN_SEEDS:
            coverage_ok = False
            print(f"error: {msg}")
        else:
            print(f"note: {msg} (fewer than {COVERAGE_MIN_SEEDS} seeds)")
    print(f"{passed} passed, {failed} failed")
    return failed == 0 and coverage_ok


def test_random_models_parity():
    """pytest entry: needs the binary (MMOE_BIN or target/{release,debug}/mmoe)."""
    binary = find_binary(None)
    if binary is None:
        import pytest  # only reached under pytest

        pytest.skip("mmoe binary not found (set MMOE_BIN or build target/release/mmoe)")
    seeds = list(range(int(os.environ.get("MMOE_PARITY_SEEDS", "40"))))
    with tempfile.TemporaryDirectory(prefix="mmoe-parity-") as tmp:
        assert run_parity(binary, seeds, Path(tmp), keep=False, f32_only=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="mmoe engine vs numpy reference on random models")
    ap.add_argument("--mmoe", help="path to the mmoe binary (default: $MMOE_BIN, target/release/mmoe, target/debug/mmoe)")
    ap.add_argument("--seeds", type=int, default=200, help="number of seeds (default 200)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--workdir", help="where to write per-seed files (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the files of passing seeds too")
    ap.add_argument("--f32-only", action="store_true", help="store every tensor as F32 in the safetensors files")
    ap.add_argument("--backends", default=",".join(BACKENDS),
                    help="engine backends to compare, comma-separated (default: %(default)s)")
    ap.add_argument("--selfcheck-only", action="store_true", help="run only the reference self-checks")
    ap.add_argument("--emu", help="path to mmoe-gpu-emu, for the emu-* backends (the GPU path on the host)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="seeds checked at once, in worker processes (default: every core, %(default)s)")
    args = ap.parse_args(argv)
    global EMU_BINARY
    EMU_BINARY = Path(args.emu) if args.emu else None

    if not run_self_checks():
        print("error: the reference failed its self-checks; not comparing against the engine")
        return 1
    if args.selfcheck_only:
        return 0
    binary = find_binary(args.mmoe)
    if binary is None:
        where = args.mmoe or f"$MMOE_BIN, {REPO_ROOT / 'target/release/mmoe'}, {REPO_ROOT / 'target/debug/mmoe'}"
        print(f"error: mmoe binary not found or not executable ({where}); build it "
              f"(cargo build --release) and pass --mmoe PATH")
        return 2
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mmoe-parity-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"binary {binary}; work dir {workdir}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    backends = tuple(b for b in args.backends.split(",") if b)
    print(f"backends: {', '.join(backends)}")
    jobs = max(1, args.jobs)
    return 0 if run_parity(binary, seeds, workdir, args.keep, args.f32_only, backends, jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
