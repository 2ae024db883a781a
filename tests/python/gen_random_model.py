"""Random small mmoe models (config + tensors + requests) that cover MODEL.md.

``generate(seed)`` returns ``(config, tensors, requests)``: a config dict, a dict
of float32 arrays in PyTorch layout named exactly as MODEL.md says, and a list
of request dicts (see mmoe_ref.py for the request format).

Coverage is deterministic: the branches of the contract (transform sets, clip,
missing policy, scopes, pooling, expert types and modes, layer/block/head
counts, gate shapes, one-expert gate present/absent, ...) are assigned by
cycling "slots" through the seeds, so any run of 40 consecutive seeds covers
each branch several times. Everything else (widths, dims, weights, ids,
values) is drawn from ``numpy.random.default_rng(seed)``.

``branches(config, tensors, requests)`` names the branches a model exercises;
``REQUIRED_BRANCHES`` is the list every long enough run must cover.

Conventions of the generated configs where MODEL.md leaves room: a finalmlp
without feature selection writes ``fs_hidden``/``fs1_context``/``fs2_context``
empty; ``rank`` is always written (``null`` for full rank); an empty
``transform`` is sometimes ``[]`` and sometimes omitted; ``clip`` is only ever
the input's field (never listed in ``transform``); ``tower`` may be ``[]``.

CLI: ``python3 gen_random_model.py --seed S --out DIR`` writes DIR/model.json,
DIR/model.safetensors (F32) and DIR/requests.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmoe_ref  # noqa: E402  (only for write_safetensors in the CLI)

TRANSFORM_SETS = ([], ["log1p"], ["standardize"], ["log1p", "standardize"])

# (type, mode) of an expert; one slot per expert, cycling through this list.
EXPERT_VARIANTS = (
    ("mlp", None),
    ("dcnv2", "full-stacked"),
    ("dcnv2", "full-parallel"),
    ("dcnv2", "lowrank-stacked"),
    ("dcnv2", "lowrank-parallel"),
    ("masknet", "serial-head"),
    ("masknet", "serial-nohead"),
    ("masknet", "parallel"),
    ("finalmlp", "fs-off"),
    ("finalmlp", "ctx-learned-c"),      # both streams learned, ctx_bias shape [c]
    ("finalmlp", "ctx-learned-1c"),     # both streams learned, ctx_bias shape [1, c]
    ("finalmlp", "ctx-inputs"),         # both streams read inputs
    ("finalmlp", "ctx-mixed"),          # fs1 learned, fs2 inputs
)

TASK_NAMES = ("click", "good_click", "save")

# Per-seed counts, periodic in the seed.
DENSE_COUNTS = (2, 2, 3, 2, 1, 2, 2, 0, 2, 3)
SPARSE_COUNTS = (2, 1, 2, 0, 2, 3, 2, 2, 1, 2)
EXPERT_COUNTS = (1, 2, 3, 4)
TASK_COUNTS = (1, 1, 2, 2, 3, 3)

TWO_53 = 1 << 53
TWO_63 = 1 << 63
U64_MAX = (1 << 64) - 1


def _slot_start(seed: int, counts: tuple) -> int:
    """Number of slots used by seeds 0..seed-1 when seed t uses counts[t % len]."""
    period = len(counts)
    return (seed // period) * sum(counts) + sum(counts[: seed % period])


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _exact(x: float) -> float:
    """A float64 that is exactly a float32 (so f32 and f64 parsers agree)."""
    return float(np.float32(x))


class _Tensors:
    """Collects float32 tensors with sensible initializations."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.t: dict[str, np.ndarray] = {}

    def uniform(self, name: str, shape, bound: float) -> None:
        self.t[name] = _f32(self.rng.uniform(-bound, bound, shape))

    def linear(self, prefix: str, out_w: int, in_w: int, gain: float = 1.0, bias: bool = True) -> None:
        # Var(W) = gain^2 / fan_in: gain sqrt(2) keeps relu layers O(1).
        self.uniform(f"{prefix}.weight", (out_w, in_w), gain * math.sqrt(3.0 / in_w))
        if bias:
            self.uniform(f"{prefix}.bias", (out_w,), 0.3)

    def mlp(self, prefix: str, in_w: int, widths: list, last_relu: bool, last_gain: float = 1.0) -> int:
        for j, out_w in enumerate(widths):
            last = j == len(widths) - 1
            gain = last_gain if (last and not last_relu) else math.sqrt(2.0)
            self.linear(f"{prefix}.{j}", out_w, in_w, gain)
            in_w = out_w
        return in_w

    def layer_norm(self, prefix: str, width: int) -> None:
        self.t[f"{prefix}.weight"] = _f32(1.0 + self.rng.uniform(-0.2, 0.2, width))
        self.t[f"{prefix}.bias"] = _f32(self.rng.uniform(-0.2, 0.2, width))


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


def _make_inputs(seed: int, rng, tensors: _Tensors) -> list[dict]:
    inputs = []
    q0 = _slot_start(seed, DENSE_COUNTS)
    for k in range(DENSE_COUNTS[seed % len(DENSE_COUNTS)]):
        q = q0 + k  # 4 transform sets x clip x missing x scope x key style = 64 slots
        transform = TRANSFORM_SETS[q % 4]
        name, dim = f"dense{k}", int(rng.integers(1, 9) if rng.random() < 0.85 else rng.integers(9, 21))
        inp = {"name": name, "kind": "dense", "scope": ("candidate", "request")[(q // 16) % 2], "dim": dim}
        if transform or (q // 32) % 2 == 0:
            inp["transform"] = list(transform)  # [] sometimes written, sometimes omitted
        if (q // 4) % 2 == 1:
            inp["clip"] = float(rng.choice([0.5, 1.0, 1.5, 2.0, 3.0]))
        if (q // 8) % 2 == 1:
            inp["missing"] = "zero"
        if "standardize" in transform:
            center = 1.5 if "log1p" in transform else 0.0
            tensors.t[f"inputs.{name}.mean"] = _f32(center + rng.uniform(-1.0, 1.0, dim))
            tensors.t[f"inputs.{name}.std"] = _f32(rng.uniform(0.5, 2.0, dim))
        inputs.append(inp)

    q0 = _slot_start(seed, SPARSE_COUNTS)
    for k in range(SPARSE_COUNTS[seed % len(SPARSE_COUNTS)]):
        q = q0 + k  # pooling x scope = 4 slots
        name, dim = f"sparse{k}", int(rng.integers(1, 7) if rng.random() < 0.85 else rng.integers(7, 13))
        rows = int(rng.choice([1, 2, 3, 5, 7, 13, 31, 50]))
        inp = {"name": name, "kind": "sparse", "scope": ("candidate", "request")[(q // 2) % 2],
               "rows": rows, "dim": dim, "pooling": ("sum", "mean")[q % 2]}
        tensors.t[f"inputs.{name}.embedding"] = _f32(rng.normal(0.0, 0.5, (rows, dim)))
        inputs.append(inp)

    # Some seeds put every input in one scope (no candidate part / no request part).
    forced_scope = {5: "request", 6: "candidate"}.get(seed % 8)
    if forced_scope:
        for inp in inputs:
            inp["scope"] = forced_scope
    # Interleave dense and sparse so config order is not "dense first".
    order = rng.permutation(len(inputs))
    return [inputs[i] for i in order]


def _random_subset(rng, inputs: list) -> list:
    """A non-empty subset of input names in random order (config order not implied).

    Sometimes only request-scope inputs, so the engine may compute once per request.
    """
    names = [inp["name"] for inp in inputs]
    request_names = [inp["name"] for inp in inputs if inp["scope"] == "request"]
    if request_names and rng.random() < 0.4:
        names = request_names
    size = int(rng.integers(1, len(names) + 1))
    return [names[i] for i in rng.permutation(len(names))[:size]]


# --------------------------------------------------------------------------
# Experts
# --------------------------------------------------------------------------


def _width(rng, low: int = 2, high: int = 24) -> int:
    """A layer width; now and then up to 48 to cross SIMD-width boundaries."""
    if rng.random() < 0.2:
        high = max(high, 48)
    return int(rng.integers(low, high + 1))


def _make_expert(q: int, index: int, rng, D: int, H: int, inputs: list, tensors: _Tensors) -> dict:
    variant = q % len(EXPERT_VARIANTS)
    kind, mode = EXPERT_VARIANTS[variant]
    input_dims = {inp["name"]: inp["dim"] for inp in inputs}
    # Advances each time this variant comes round; offset by the variant so that
    # sibling variants (e.g. the three masknet modes) do not share a count.
    cycle = q // len(EXPERT_VARIANTS) + variant
    name = f"{kind[:4]}{index}"
    p = f"experts.{name}"
    ex: dict = {"name": name, "type": kind}

    if kind == "mlp":
        ex["hidden"] = [_width(rng) for _ in range(int(rng.integers(0, 3)))] + [H]
        tensors.mlp(f"{p}.mlp", D, ex["hidden"], last_relu=True)

    elif kind == "dcnv2":
        low_rank = mode.startswith("lowrank")
        ex["cross_layers"] = 1 + cycle % 3
        ex["rank"] = int(rng.integers(1, 9)) if low_rank else None
        ex["structure"] = "stacked" if mode.endswith("stacked") else "parallel"
        for l in range(ex["cross_layers"]):
            c = f"{p}.cross.{l}"
            if low_rank:
                r = ex["rank"]
                tensors.uniform(f"{c}.down.weight", (r, D), math.sqrt(3.0 / D))
                tensors.uniform(f"{c}.up.weight", (D, r), 0.3 * math.sqrt(3.0 / r))
            else:
                tensors.uniform(f"{c}.weight", (D, D), 0.3 * math.sqrt(3.0 / D))
            tensors.uniform(f"{c}.bias", (D,), 0.2)
        if ex["structure"] == "stacked":
            ex["deep"] = [_width(rng) for _ in range(int(rng.integers(0, 2)))] + [H]
            tensors.mlp(f"{p}.deep", D, ex["deep"], last_relu=True)
        else:
            ex["deep"] = [_width(rng) for _ in range(int(rng.integers(1, 3)))]
            deep_out = tensors.mlp(f"{p}.deep", D, ex["deep"], last_relu=True)
            tensors.linear(f"{p}.proj", H, D + deep_out, math.sqrt(2.0))

    elif kind == "masknet":
        serial = mode.startswith("serial")
        n_blocks = 1 + cycle % 3
        blocks = [_width(rng, 2, 16) for _ in range(n_blocks)]
        if mode == "serial-nohead":
            blocks[-1] = H
        ex.update({"mode": "serial" if serial else "parallel", "blocks": blocks,
                   "mask_hidden": _width(rng, 2, 16)})
        tensors.layer_norm(f"{p}.emb_ln", D)
        m = ex["mask_hidden"]
        for b, o_b in enumerate(blocks):
            i_b = blocks[b - 1] if (serial and b > 0) else D
            c = f"{p}.blocks.{b}"
            tensors.linear(f"{c}.mask.0", m, D, math.sqrt(2.0))
            tensors.linear(f"{c}.mask.1", i_b, m)
            tensors.linear(f"{c}.hidden", o_b, i_b, bias=False)
            tensors.layer_norm(f"{c}.ln", o_b)
        ex["head"] = [] if mode == "serial-nohead" else [_width(rng) for _ in range(int(rng.integers(0, 2)))] + [H]
        if ex["head"]:
            result = sum(blocks) if not serial else blocks[-1]
            tensors.mlp(f"{p}.head", result, ex["head"], last_relu=True)

    elif kind == "finalmlp":
        k = 1 + cycle % 4
        ex["heads"] = k
        ex["mlp1"] = [_width(rng) for _ in range(int(rng.integers(0, 2)))] + [k * int(rng.integers(1, 5))]
        ex["mlp2"] = [_width(rng) for _ in range(int(rng.integers(0, 2)))] + [k * int(rng.integers(1, 5))]
        ex["feature_selection"] = mode != "fs-off"
        # Without feature selection the fs fields are written empty: whether
        # non-empty ones are ignored or refused is not the contract's to say.
        ex["fs_hidden"] = [_width(rng, 2, 16)] if (ex["feature_selection"] and rng.random() < 0.5) else []
        contexts = {1: [], 2: []}
        if mode == "ctx-inputs":
            contexts = {1: _random_subset(rng, inputs), 2: _random_subset(rng, inputs)}
        elif mode == "ctx-mixed":
            contexts[2] = _random_subset(rng, inputs)
        ex["fs1_context"], ex["fs2_context"] = contexts[1], contexts[2]
        if ex["feature_selection"]:
            for s in (1, 2):
                if contexts[s]:
                    c = sum(input_dims[n] for n in contexts[s])
                else:
                    c = int(rng.integers(1, 7))
                    one_row = mode == "ctx-learned-1c" or (mode == "ctx-mixed" and rng.random() < 0.5)
                    tensors.t[f"{p}.fs{s}.ctx_bias"] = _f32(rng.normal(0.0, 1.0, (1, c) if one_row else (c,)))
                tensors.mlp(f"{p}.fs{s}.gate", c, ex["fs_hidden"] + [D], last_relu=False)
        d1 = tensors.mlp(f"{p}.mlp1", D, ex["mlp1"], last_relu=True)
        d2 = tensors.mlp(f"{p}.mlp2", D, ex["mlp2"], last_relu=True)
        hx, hy = d1 // k, d2 // k
        tensors.linear(f"{p}.agg.w_x", H, d1)
        tensors.linear(f"{p}.agg.w_y", H, d2)
        tensors.uniform(f"{p}.agg.w_xy", (k * hx * hy, H), 0.3 * math.sqrt(3.0 / (k * hx * hy)))
    return ex


# --------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------


def _dense_value(rng, inp: dict, tensors: dict, element: int) -> float:
    transform = inp.get("transform") or []
    name = inp["name"]
    if "standardize" in transform:
        mean = float(tensors[f"inputs.{name}.mean"][element])
        std = float(tensors[f"inputs.{name}.std"][element])
        core = mean + std * rng.normal(0.0, 1.5)
    else:
        core = rng.normal(0.0, 1.5) if "log1p" not in transform else rng.uniform(-4.0, 4.0)
    if "log1p" in transform:  # core lives in the log domain
        core = math.copysign(math.expm1(abs(core)), core)
    return _exact(core)


def _dense_row(rng, inp: dict, tensors: dict) -> list:
    row = []
    for e in range(inp["dim"]):
        if inp.get("missing") == "zero" and rng.random() < 0.2:
            row.append(None)
        else:
            row.append(_dense_value(rng, inp, tensors, e))
    return row


def _random_id(rng, rows: int) -> int:
    kind = int(rng.integers(0, 7))
    if kind == 0:
        return int(rng.integers(0, rows))
    if kind == 1:
        return int(rng.integers(rows, rows + 1000))
    if kind == 2:
        return TWO_53 + int(rng.integers(0, 1 << 40))
    if kind == 3:
        return TWO_63 + int(rng.integers(0, 1 << 62)) * 2 + int(rng.integers(0, 2))
    if kind == 4:
        return U64_MAX - int(rng.integers(0, 3))
    if kind == 5:
        return TWO_63 - int(rng.integers(0, 3))
    return int(rng.integers(0, 1 << 62))


def _bag(rng, rows: int) -> list:
    if rng.random() < 0.2:
        return []
    bag = [_random_id(rng, rows) for _ in range(int(rng.integers(1, 6)))]
    if len(bag) > 1 and rng.random() < 0.3:
        bag[-1] = bag[0]  # a repeated id counts twice
    return bag


def _make_request(rng, config: dict, tensors: dict, n: int) -> dict:
    request = {"n": n, "dense": {}, "sparse": {}}
    for inp in config["inputs"]:
        if inp["kind"] == "dense":
            if inp["scope"] == "request":
                value = _dense_row(rng, inp, tensors)
            else:
                value = [_dense_row(rng, inp, tensors) for _ in range(n)]
            request["dense"][inp["name"]] = value
        else:
            if inp["scope"] == "request":
                value = [_bag(rng, inp["rows"])]
            else:
                value = [_bag(rng, inp["rows"]) for _ in range(n)]
            request["sparse"][inp["name"]] = value
    return request


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------


def generate(seed: int) -> tuple[dict, dict, list]:
    """(config, float32 tensors, requests) for one seed; deterministic."""
    rng = np.random.default_rng(seed)
    tensors = _Tensors(rng)
    inputs = _make_inputs(seed, rng, tensors)
    input_names = [inp["name"] for inp in inputs]
    D = sum(inp["dim"] for inp in inputs)
    H = int(rng.integers(1, 13))

    n_experts = EXPERT_COUNTS[seed % len(EXPERT_COUNTS)]
    q0 = _slot_start(seed, EXPERT_COUNTS)
    experts = [_make_expert(q0 + j, j, rng, D, H, inputs, tensors) for j in range(n_experts)]

    tasks = []
    n_tasks = TASK_COUNTS[seed % len(TASK_COUNTS)]
    q0 = _slot_start(seed, TASK_COUNTS)
    for ti in range(n_tasks):
        q = q0 + ti  # gate_hidden x gate_inputs x (order) = 8 slots, tower length cycles slower
        # Odd slots have a gate_hidden: one layer, or two in alternating runs of slots.
        gate_layers = (1 + (q // 24) % 2) if q % 2 else 0
        task = {"name": TASK_NAMES[ti], "gate_hidden": [_width(rng, 2, 16) for _ in range(gate_layers)]}
        gate_width = D
        if (q // 2) % 2 == 1:
            subset = _random_subset(rng, inputs)
            if (q // 4) % 2 == 1:
                subset = [n for n in input_names if n in subset][::-1]  # reverse config order
            task["gate_inputs"] = subset
            gate_width = sum(inp["dim"] for inp in inputs if inp["name"] in subset)
        task["tower"] = [_width(rng) for _ in range((q // 8) % 3)]
        p = f"tasks.{task['name']}"
        one_expert_absent = n_experts == 1 and (seed // len(EXPERT_COUNTS)) % 2 == 0
        if not one_expert_absent:
            tensors.mlp(f"{p}.gate", gate_width, task["gate_hidden"] + [n_experts], last_relu=False, last_gain=2.0)
        tensors.mlp(f"{p}.tower", H, task["tower"] + [1], last_relu=False)
        tasks.append(task)

    config = {"name": f"random-{seed}", "expert_dim": H, "inputs": inputs, "experts": experts, "tasks": tasks}

    requests = []
    for r in range(int(rng.integers(2, 4))):
        n = 1 if (r == 0 and seed % 3 == 0) else int(rng.integers(1, 10))
        requests.append(_make_request(rng, config, tensors.t, n))
    _ensure_nulls(rng, config, requests)
    return config, tensors.t, requests


def _ensure_nulls(rng, config: dict, requests: list) -> None:
    """Every missing-zero input gets at least one null somewhere."""
    for inp in config["inputs"]:
        if inp.get("missing") != "zero":
            continue
        values = [req["dense"][inp["name"]] for req in requests]
        rows = [v for v in values] if inp["scope"] == "request" else [row for v in values for row in v]
        if any(x is None for row in rows for x in row):
            continue
        row = rows[int(rng.integers(0, len(rows)))]
        row[int(rng.integers(0, len(row)))] = None


# --------------------------------------------------------------------------
# Coverage
# --------------------------------------------------------------------------

REQUIRED_BRANCHES = (
    [f"dense.transform={'+'.join(t) or 'none'}.{c}" for t in TRANSFORM_SETS for c in ("clip", "noclip")]
    + ["dense.transform_key_omitted", "dense.missing=zero", "dense.missing=error",
       "dense.null.scope=request", "dense.null.scope=candidate",
       "dense.scope=request", "dense.scope=candidate", "inputs.no_dense",
       "sparse.pooling=sum", "sparse.pooling=mean", "sparse.scope=request", "sparse.scope=candidate",
       "sparse.empty_bag.sum", "sparse.empty_bag.mean", "sparse.empty_bag.scope=request",
       "sparse.id>=rows", "sparse.id>2^53", "sparse.id>=2^63", "sparse.id=2^64-1", "sparse.rows=1",
       "sparse.repeated_id", "inputs.no_sparse", "inputs.all_request_scope", "inputs.all_candidate_scope"]
    + ["expert.mlp", "expert.dcnv2.full.stacked", "expert.dcnv2.full.parallel",
       "expert.dcnv2.lowrank.stacked", "expert.dcnv2.lowrank.parallel"]
    + [f"expert.dcnv2.cross_layers={L}" for L in (1, 2, 3)]
    + ["expert.masknet.serial.head", "expert.masknet.serial.nohead", "expert.masknet.parallel"]
    + [f"expert.masknet.blocks={b}" for b in (1, 2, 3)]
    + ["expert.finalmlp.fs=off", "expert.finalmlp.ctx=learned[c]", "expert.finalmlp.ctx=learned[1,c]",
       "expert.finalmlp.ctx=inputs", "expert.finalmlp.ctx=request_scope_only", "expert.finalmlp.fs_hidden=[]", "expert.finalmlp.fs_hidden=nonempty"]
    + [f"expert.finalmlp.heads={k}" for k in (1, 2, 3, 4)]
    + [f"experts={e}" for e in (1, 2, 3, 4)]
    + [f"tasks={t}" for t in (1, 2, 3)]
    + ["gate_hidden=[]", "gate_hidden=nonempty", "gate_hidden=2 layers", "gate_inputs=none", "gate_inputs=subset",
       "gate_inputs=not_config_order", "gate_inputs=request_scope_only", "one_expert.gate_present", "one_expert.gate_absent",
       "tower=[]", "tower=nonempty", "request.n=1", "request.n>1"]
)


def branches(config: dict, tensors: dict, requests: list) -> set:
    """Names of the contract branches this model and its requests exercise."""
    out: set = set()
    inputs = config["inputs"]
    names = [inp["name"] for inp in inputs]
    if not any(inp["kind"] == "dense" for inp in inputs):
        out.add("inputs.no_dense")
    if not any(inp["kind"] == "sparse" for inp in inputs):
        out.add("inputs.no_sparse")
    scopes = {inp["name"]: inp["scope"] for inp in inputs}
    if set(scopes.values()) == {"request"}:
        out.add("inputs.all_request_scope")
    if set(scopes.values()) == {"candidate"}:
        out.add("inputs.all_candidate_scope")
    for inp in inputs:
        name = inp["name"]
        if inp["kind"] == "dense":
            transform = inp.get("transform") or []
            out.add(f"dense.transform={'+'.join(transform) or 'none'}.{'clip' if inp.get('clip') is not None else 'noclip'}")
            if "transform" not in inp:
                out.add("dense.transform_key_omitted")
            out.add(f"dense.scope={inp['scope']}")
            out.add("dense.missing=zero" if inp.get("missing") == "zero" else "dense.missing=error")
            for req in requests:
                value = req["dense"][name]
                rows = [value] if inp["scope"] == "request" else value
                if any(x is None for row in rows for x in row):
                    out.add(f"dense.null.scope={inp['scope']}")
        else:
            out.add(f"sparse.pooling={inp['pooling']}")
            out.add(f"sparse.scope={inp['scope']}")
            rows = inp["rows"]
            if rows == 1:
                out.add("sparse.rows=1")
            for req in requests:
                for bag in req["sparse"][name]:
                    if not bag:
                        out.add(f"sparse.empty_bag.{inp['pooling']}")
                        if inp["scope"] == "request":
                            out.add("sparse.empty_bag.scope=request")
                    if len(set(bag)) < len(bag):
                        out.add("sparse.repeated_id")
                    for ident in bag:
                        if ident >= rows:
                            out.add("sparse.id>=rows")
                        if ident > TWO_53:
                            out.add("sparse.id>2^53")
                        if ident >= TWO_63:
                            out.add("sparse.id>=2^63")
                        if ident == U64_MAX:
                            out.add("sparse.id=2^64-1")
    for ex in config["experts"]:
        p = f"experts.{ex['name']}"
        if ex["type"] == "mlp":
            out.add("expert.mlp")
        elif ex["type"] == "dcnv2":
            rank = "full" if ex.get("rank") is None else "lowrank"
            out.add(f"expert.dcnv2.{rank}.{ex['structure']}")
            out.add(f"expert.dcnv2.cross_layers={ex['cross_layers']}")
        elif ex["type"] == "masknet":
            if ex["mode"] == "parallel":
                out.add("expert.masknet.parallel")
            else:
                out.add("expert.masknet.serial." + ("head" if ex.get("head") else "nohead"))
            out.add(f"expert.masknet.blocks={len(ex['blocks'])}")
        elif ex["type"] == "finalmlp":
            out.add(f"expert.finalmlp.heads={ex['heads']}")
            if not ex.get("feature_selection"):
                out.add("expert.finalmlp.fs=off")
                continue
            out.add("expert.finalmlp.fs_hidden=" + ("nonempty" if ex.get("fs_hidden") else "[]"))
            for s in (1, 2):
                if ex.get(f"fs{s}_context"):
                    out.add("expert.finalmlp.ctx=inputs")
                    if all(scopes[n] == "request" for n in ex[f"fs{s}_context"]):
                        out.add("expert.finalmlp.ctx=request_scope_only")
                else:
                    shape = tensors[f"{p}.fs{s}.ctx_bias"].shape
                    out.add("expert.finalmlp.ctx=learned[c]" if len(shape) == 1 else "expert.finalmlp.ctx=learned[1,c]")
    E = len(config["experts"])
    out.add(f"experts={E}")
    out.add(f"tasks={len(config['tasks'])}")
    for task in config["tasks"]:
        out.add("gate_hidden=" + ("nonempty" if task.get("gate_hidden") else "[]"))
        if len(task.get("gate_hidden") or []) >= 2:
            out.add("gate_hidden=2 layers")
        gate_inputs = task.get("gate_inputs")
        if gate_inputs is None:
            out.add("gate_inputs=none")
        else:
            out.add("gate_inputs=subset")
            if gate_inputs != [n for n in names if n in gate_inputs]:
                out.add("gate_inputs=not_config_order")
            if all(scopes[n] == "request" for n in gate_inputs):
                out.add("gate_inputs=request_scope_only")
        if E == 1:
            present = f"tasks.{task['name']}.gate.0.weight" in tensors
            out.add("one_expert.gate_present" if present else "one_expert.gate_absent")
        out.add("tower=" + ("nonempty" if task.get("tower") else "[]"))
    for req in requests:
        out.add("request.n=1" if req["n"] == 1 else "request.n>1")
    return out


def describe(config: dict, tensors: dict | None = None) -> str:
    """A one-line summary of a config's branches, for failure reports."""
    parts = []
    for ex in config["experts"]:
        if ex["type"] == "mlp":
            parts.append(f"mlp{ex['hidden']}")
        elif ex["type"] == "dcnv2":
            rank = "full" if ex.get("rank") is None else f"r{ex['rank']}"
            parts.append(f"dcnv2({rank},{ex['structure']},L{ex['cross_layers']})")
        elif ex["type"] == "masknet":
            parts.append(f"masknet({ex['mode']},blocks{ex['blocks']},head{ex.get('head')})")
        else:
            fs = "fs-off"
            if ex.get("feature_selection"):
                fs = "ctx:" + "/".join(",".join(ex.get(f"fs{s}_context") or []) or "learned" for s in (1, 2))
            parts.append(f"finalmlp(k{ex['heads']},{fs})")
    ins = ",".join(
        f"{i['name']}({i['scope'][0]}"
        + (f",{'+'.join(i.get('transform') or []) or '-'}" + (f",clip{i['clip']}" if i.get("clip") is not None else "")
           + (",mz" if i.get("missing") == "zero" else "") if i["kind"] == "dense"
           else f",{i['pooling']},rows{i['rows']}")
        + ")"
        for i in config["inputs"])
    gates = []
    for t in config["tasks"]:
        g = f"{t['name']}:gh{t.get('gate_hidden')}"
        if t.get("gate_inputs") is not None:
            g += f",gi{t['gate_inputs']}"
        if tensors is not None and len(config["experts"]) == 1 and f"tasks.{t['name']}.gate.0.weight" not in tensors:
            g += ",no-gate"
        gates.append(g + f",tower{t.get('tower')}")
    D = sum(i["dim"] for i in config["inputs"])
    return f"D={D} H={config['expert_dim']} inputs=[{ins}] experts=[{'; '.join(parts)}] tasks=[{'; '.join(gates)}]"


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def write_model(directory: str, config: dict, tensors: dict, requests: list) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "model.json"), "w") as f:
        json.dump(config, f, indent=1)
    mmoe_ref.write_safetensors(os.path.join(directory, "model.safetensors"), tensors)
    with open(os.path.join(directory, "requests.jsonl"), "w") as f:
        for req in requests:
            f.write(json.dumps(req) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="write a random mmoe model for parity tests")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True, help="directory for model.json, model.safetensors, requests.jsonl")
    ap.add_argument("--big-request", type=int, default=0, metavar="N",
                    help="also write requests-N.jsonl: one request of N candidates (the GPU's large-bucket kernels)")
    args = ap.parse_args(argv)
    config, tensors, requests = generate(args.seed)
    write_model(args.out, config, tensors, requests)
    if args.big_request > 0:
        # Its own random stream: the model and requests.jsonl stay as they are.
        rng = np.random.default_rng([args.seed, args.big_request])
        big = [_make_request(rng, config, tensors, args.big_request)]
        with open(os.path.join(args.out, f"requests-{args.big_request}.jsonl"), "w") as f:
            f.write(json.dumps(big[0]) + "\n")
    print(describe(config, tensors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
