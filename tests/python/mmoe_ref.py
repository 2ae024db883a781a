"""Independent numpy reference of the mmoe model contract (docs: shared/MODEL.md).

This file is an oracle: it is written from the contract alone, never from the
engine's source, and favours plain, checkable code over speed. Everything is
computed in float64.

Public surface
--------------
- ``load_safetensors(path)``      -> dict name -> float64 ndarray (F32/F16/BF16/F64)
- ``write_safetensors(path, t)``  writes F32 / F16 arrays, and BF16 given as
                                   ``(uint16_bits, "BF16")`` (see ``to_bf16``)
- ``round_f16(tensors)``          every tensor rounded to float16 and back (what an
                                   fp16-packed model file computes)
- ``forward(config, tensors, request)`` -> (logits [N, T], probabilities [N, T])
- CLI: ``python3 mmoe_ref.py --config C.json --weights W.safetensors
        --requests R.jsonl --out S.jsonl [--round-f16]``

Request (one JSON object per line)::

    {"n": N,
     "dense":  {name: [dim floats]               (scope request)
                   | [[dim floats] x N]          (scope candidate)},
     "sparse": {name: [[ids]]                    (scope request: exactly one bag)
                   | [[ids] x N]                 (scope candidate)}}

``null`` stands for a missing dense value. Output line::

    {"logits": [[one per task] x N], "probabilities": [[...] x N]}

Conventions chosen here where MODEL.md is silent or loose:
- ``clip`` is applied whenever the input has a ``clip`` field; ``"clip"`` may
  also appear in ``transform`` (then the field is required). The order is always
  log1p, standardize, clip, whatever the order of the ``transform`` list.
- ``experts.<e>.fs<s>.ctx_bias`` may have shape [c] or [1, c], any c >= 1; the
  gate's first layer then reads width c.
- With exactly one expert the task gate may be absent (all of its tensors);
  then w = [1]. If present it is computed (softmax of one logit is 1).
- A missing dense value is ``null`` (or any non-finite number); with
  ``"missing": "zero"`` that element's *transformed* value is 0.
- Unknown request inputs, unknown config keys' values (transform names,
  pooling, scope, ...) and tensors that are missing, extra or misshaped are
  errors (``ContractError``) that name the culprit.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys

import numpy as np

LN_EPS = 1e-5
U64_MAX = (1 << 64) - 1


class ContractError(ValueError):
    """A config, tensor set or request that the contract rejects."""


# --------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------

BF16 = "BF16"
_NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def load_safetensors(path: str) -> dict[str, np.ndarray]:
    """Parse a safetensors file by hand and return float64 arrays.

    Layout: u64 little-endian header length n, n bytes of JSON header
    ({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__"?}),
    then the data; offsets are relative to the start of the data.
    """
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ContractError(f"{path}: too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if 8 + header_len > len(blob):
        raise ContractError(f"{path}: header length {header_len} past end of file")
    header = json.loads(blob[8 : 8 + header_len].decode("utf-8"))
    data_start = 8 + header_len
    data_len = len(blob) - data_start
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info["dtype"]
        if dtype not in _DTYPE_SIZES:
            raise ContractError(f"tensor {name}: unsupported dtype {dtype}")
        shape = [int(d) for d in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
        count = math.prod(shape)
        if not (0 <= begin <= end <= data_len) or end - begin != count * _DTYPE_SIZES[dtype]:
            raise ContractError(f"tensor {name}: bad data_offsets {begin}..{end} for {dtype}{shape}")
        raw = blob[data_start + begin : data_start + end]
        if dtype == BF16:
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << np.uint32(16)
            values = bits.view(np.float32)
        else:
            values = np.frombuffer(raw, dtype=_NUMPY_DTYPES[dtype])
        tensors[name] = values.astype(np.float64).reshape(shape)
    return tensors


def to_bf16(array) -> tuple[np.ndarray, str]:
    """Round an array to bfloat16 (nearest, ties to even) for write_safetensors.

    Returns the BF16 marker accepted by write_safetensors: (uint16 bits, "BF16").
    """
    f32 = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    bits = f32.view(np.uint32).astype(np.uint64)
    rounding = np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))
    rounded = ((bits + rounding) >> np.uint64(16)).astype(np.uint16)
    nan = np.isnan(f32)
    rounded[nan] = np.uint16(0x7FC0)
    return rounded.reshape(f32.shape), BF16


def bf16_values(marker: tuple[np.ndarray, str]) -> np.ndarray:
    """The float64 values a BF16 marker stands for."""
    bits, tag = marker
    assert tag == BF16
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)


def write_safetensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """Write tensors sorted by name.

    Each value is a float32 ndarray (written F32), a float16 ndarray (F16), or
    the marker ``(uint16 ndarray of raw bf16 bits, "BF16")`` made by ``to_bf16``.
    Any other dtype is refused (convert explicitly; nothing is guessed).
    """
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        value = tensors[name]
        if isinstance(value, tuple):
            bits, tag = value
            if tag != BF16:
                raise ValueError(f"tensor {name}: unknown marker {tag!r}")
            bits = np.asarray(bits)
            if bits.dtype != np.uint16:
                raise ValueError(f"tensor {name}: BF16 bits must be uint16")
            raw, dtype, shape = np.ascontiguousarray(bits, dtype="<u2").tobytes(), BF16, bits.shape
        else:
            arr = np.asarray(value)
            if arr.dtype == np.float32:
                dtype = "F32"
            elif arr.dtype == np.float16:
                dtype = "F16"
            else:
                raise ValueError(f"tensor {name}: dtype {arr.dtype} (want float32, float16 or a BF16 marker)")
            raw, shape = np.ascontiguousarray(arr, dtype=_NUMPY_DTYPES[dtype]).tobytes(), arr.shape
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for chunk in chunks:
            f.write(chunk)


def round_f16(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor rounded to float16 (nearest even) and back to float64.

    A value that does not fit float16 (|x| > 65504, fp16's largest finite
    value, before rounding: 65510 is refused though it would round to 65504)
    is an error naming the tensor, as the packer refuses it.
    """
    rounded = {}
    for name, value in tensors.items():
        f32 = np.asarray(value, dtype=np.float32)
        if np.any(np.abs(f32[np.isfinite(f32)]) > 65504.0):
            raise ContractError(f"tensor {name}: value does not fit float16")
        with np.errstate(over="ignore"):
            f16 = f32.astype(np.float16)
        rounded[name] = f16.astype(np.float64)
    return rounded


# --------------------------------------------------------------------------
# Small building blocks (batched over candidates: x has shape [N, width])
# --------------------------------------------------------------------------


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - np.max(x, axis=-1, keepdims=True)
    ex = np.exp(shifted)
    return ex / np.sum(ex, axis=-1, keepdims=True)


def linear(x: np.ndarray, tensors: dict, prefix: str, bias: bool = True) -> np.ndarray:
    """y = W x + b with W = <prefix>.weight [out, in] (PyTorch layout)."""
    y = x @ tensors[f"{prefix}.weight"].T
    if bias:
        y = y + tensors[f"{prefix}.bias"]
    return y


def mlp(x: np.ndarray, tensors: dict, prefix: str, n_layers: int, relu_last: bool) -> np.ndarray:
    """Layers <prefix>.0 .. <prefix>.<n_layers-1>, relu after each but maybe the last."""
    for j in range(n_layers):
        x = linear(x, tensors, f"{prefix}.{j}")
        if j < n_layers - 1 or relu_last:
            x = relu(x)
    return x


def layer_norm(x: np.ndarray, tensors: dict, prefix: str) -> np.ndarray:
    """LayerNorm over the whole (last) axis, biased variance, eps 1e-5."""
    mean = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * tensors[f"{prefix}.weight"] + tensors[f"{prefix}.bias"]


# --------------------------------------------------------------------------
# Config reading and the expected tensor shapes
# --------------------------------------------------------------------------

_TRANSFORMS = ("log1p", "standardize", "clip")


def input_offsets(config: dict) -> dict[str, tuple[int, int]]:
    """name -> (start, end) of that input's slice of x0 (config order)."""
    offsets, start = {}, 0
    for inp in config["inputs"]:
        offsets[inp["name"]] = (start, start + int(inp["dim"]))
        start += int(inp["dim"])
    return offsets


def feature_dim(config: dict) -> int:
    return sum(int(inp["dim"]) for inp in config["inputs"])


def subset_slices(config: dict, names: list, what: str) -> list[tuple[int, int]]:
    """x0 slices of the named inputs, in *config* order (not list order)."""
    known = [inp["name"] for inp in config["inputs"]]
    for name in names:
        if name not in known:
            raise ContractError(f"{what}: unknown input {name!r}")
    if len(set(names)) != len(names):
        raise ContractError(f"{what}: duplicate input names {names}")
    if not names:
        raise ContractError(f"{what}: empty input list")
    offsets = input_offsets(config)
    return [offsets[name] for name in known if name in names]


def subset_width(config: dict, names: list, what: str) -> int:
    return sum(end - start for start, end in subset_slices(config, names, what))


def _mlp_shapes(shapes: dict, prefix: str, in_width: int, widths: list) -> int:
    for j, out_width in enumerate(widths):
        shapes[f"{prefix}.{j}.weight"] = (int(out_width), in_width)
        shapes[f"{prefix}.{j}.bias"] = (int(out_width),)
        in_width = int(out_width)
    return in_width


def _check_positive(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ContractError(f"{what}: must be a positive integer, got {value!r}")
    return value


def expected_shapes(config: dict, tensors: dict) -> tuple[dict, set]:
    """(name -> shape of every required tensor, names of optional tensors).

    ``tensors`` is consulted only for the learned context vectors, whose
    length c is free (shape [c] or [1, c]).
    """
    shapes: dict[str, tuple] = {}
    optional: set[str] = set()
    D = feature_dim(config)
    H = _check_positive(config["expert_dim"], "expert_dim")
    names = [inp["name"] for inp in config["inputs"]]
    if len(set(names)) != len(names):
        raise ContractError("inputs: duplicate names")

    for inp in config["inputs"]:
        name, dim = inp["name"], _check_positive(inp["dim"], f"input {inp['name']}: dim")
        if inp.get("scope") not in ("request", "candidate"):
            raise ContractError(f"input {name}: scope must be request or candidate")
        if inp["kind"] == "dense":
            transforms = inp.get("transform") or []
            for t in transforms:
                if t not in _TRANSFORMS:
                    raise ContractError(f"input {name}: unknown transform {t!r}")
            if "clip" in transforms and inp.get("clip") is None:
                raise ContractError(f"input {name}: transform clip without a clip field")
            if inp.get("missing") not in (None, "zero"):
                raise ContractError(f"input {name}: unknown missing policy {inp['missing']!r}")
            if "standardize" in transforms:
                shapes[f"inputs.{name}.mean"] = (dim,)
                shapes[f"inputs.{name}.std"] = (dim,)
        elif inp["kind"] == "sparse":
            rows = _check_positive(inp["rows"], f"input {name}: rows")
            if inp.get("pooling") not in ("sum", "mean"):
                raise ContractError(f"input {name}: pooling must be sum or mean")
            shapes[f"inputs.{name}.embedding"] = (rows, dim)
        else:
            raise ContractError(f"input {name}: unknown kind {inp['kind']!r}")

    expert_names = [e["name"] for e in config["experts"]]
    if not expert_names or len(set(expert_names)) != len(expert_names):
        raise ContractError("experts: empty or duplicate names")
    for ex in config["experts"]:
        p = f"experts.{ex['name']}"
        kind = ex["type"]
        if kind == "mlp":
            if _mlp_shapes(shapes, f"{p}.mlp", D, ex["hidden"]) != H or not ex["hidden"]:
                raise ContractError(f"expert {ex['name']}: last hidden width must be expert_dim")
        elif kind == "dcnv2":
            L = _check_positive(ex["cross_layers"], f"expert {ex['name']}: cross_layers")
            rank = ex.get("rank")
            for l in range(L):
                if rank is None:
                    shapes[f"{p}.cross.{l}.weight"] = (D, D)
                else:
                    r = _check_positive(rank, f"expert {ex['name']}: rank")
                    shapes[f"{p}.cross.{l}.down.weight"] = (r, D)
                    shapes[f"{p}.cross.{l}.up.weight"] = (D, r)
                shapes[f"{p}.cross.{l}.bias"] = (D,)
            if not ex["deep"]:
                raise ContractError(f"expert {ex['name']}: deep must not be empty")
            deep_out = _mlp_shapes(shapes, f"{p}.deep", D, ex["deep"])
            if ex["structure"] == "stacked":
                if deep_out != H:
                    raise ContractError(f"expert {ex['name']}: last deep width must be expert_dim")
            elif ex["structure"] == "parallel":
                shapes[f"{p}.proj.weight"] = (H, D + deep_out)
                shapes[f"{p}.proj.bias"] = (H,)
            else:
                raise ContractError(f"expert {ex['name']}: unknown structure {ex['structure']!r}")
        elif kind == "masknet":
            mode, blocks = ex["mode"], ex["blocks"]
            m = _check_positive(ex["mask_hidden"], f"expert {ex['name']}: mask_hidden")
            if mode not in ("serial", "parallel") or not blocks:
                raise ContractError(f"expert {ex['name']}: bad mode or empty blocks")
            shapes[f"{p}.emb_ln.weight"] = (D,)
            shapes[f"{p}.emb_ln.bias"] = (D,)
            for b, o_b in enumerate(blocks):
                o_b = _check_positive(o_b, f"expert {ex['name']}: block width")
                i_b = D if (mode == "parallel" or b == 0) else int(blocks[b - 1])
                q = f"{p}.blocks.{b}"
                shapes[f"{q}.mask.0.weight"] = (m, D)
                shapes[f"{q}.mask.0.bias"] = (m,)
                shapes[f"{q}.mask.1.weight"] = (i_b, m)
                shapes[f"{q}.mask.1.bias"] = (i_b,)
                shapes[f"{q}.hidden.weight"] = (o_b, i_b)
                shapes[f"{q}.ln.weight"] = (o_b,)
                shapes[f"{q}.ln.bias"] = (o_b,)
            result_width = sum(blocks) if mode == "parallel" else int(blocks[-1])
            head = ex.get("head") or []
            if not head and mode == "parallel":
                raise ContractError(f"expert {ex['name']}: parallel masknet needs a head")
            if _mlp_shapes(shapes, f"{p}.head", result_width, head) != H:
                raise ContractError(f"expert {ex['name']}: output width must be expert_dim")
        elif kind == "finalmlp":
            k = _check_positive(ex["heads"], f"expert {ex['name']}: heads")
            if ex.get("feature_selection"):
                for s in (1, 2):
                    context = ex.get(f"fs{s}_context") or []
                    if context:
                        c = subset_width(config, context, f"expert {ex['name']}: fs{s}_context")
                    else:
                        bias_name = f"{p}.fs{s}.ctx_bias"
                        given = tensors.get(bias_name)
                        if given is not None and (given.ndim == 1 or (given.ndim == 2 and given.shape[0] == 1)) and given.size >= 1:
                            shapes[bias_name] = tuple(given.shape)
                            c = int(given.size)
                        else:
                            raise ContractError(f"tensor {bias_name}: missing or misshaped (expected [c] or [1, c])")
                    _mlp_shapes(shapes, f"{p}.fs{s}.gate", c, list(ex.get("fs_hidden") or []) + [D])
            if not ex["mlp1"] or not ex["mlp2"]:
                raise ContractError(f"expert {ex['name']}: mlp1 and mlp2 must not be empty")
            d1 = _mlp_shapes(shapes, f"{p}.mlp1", D, ex["mlp1"])
            d2 = _mlp_shapes(shapes, f"{p}.mlp2", D, ex["mlp2"])
            if d1 % k or d2 % k:
                raise ContractError(f"expert {ex['name']}: mlp widths {d1}, {d2} not divisible by heads {k}")
            shapes[f"{p}.agg.w_x.weight"] = (H, d1)
            shapes[f"{p}.agg.w_x.bias"] = (H,)
            shapes[f"{p}.agg.w_y.weight"] = (H, d2)
            shapes[f"{p}.agg.w_y.bias"] = (H,)
            shapes[f"{p}.agg.w_xy"] = (k * (d1 // k) * (d2 // k), H)
        else:
            raise ContractError(f"expert {ex['name']}: unknown type {kind!r}")

    E = len(config["experts"])
    task_names = [t["name"] for t in config["tasks"]]
    if not task_names or len(set(task_names)) != len(task_names):
        raise ContractError("tasks: empty or duplicate names")
    for task in config["tasks"]:
        p = f"tasks.{task['name']}"
        gate_inputs = task.get("gate_inputs")
        g_width = D if gate_inputs is None else subset_width(config, gate_inputs, f"task {task['name']}: gate_inputs")
        gate_shapes: dict = {}
        _mlp_shapes(gate_shapes, f"{p}.gate", g_width, list(task.get("gate_hidden") or []) + [E])
        shapes.update(gate_shapes)
        if E == 1:
            optional.update(gate_shapes)
        _mlp_shapes(shapes, f"{p}.tower", H, list(task.get("tower") or []) + [1])
    return shapes, optional


def validate_tensors(config: dict, tensors: dict) -> None:
    """Missing, extra or misshaped tensors are errors that name the tensor."""
    shapes, optional = expected_shapes(config, tensors)
    for name, shape in shapes.items():
        if name not in tensors:
            if name in optional:
                continue
            raise ContractError(f"tensor {name}: missing (expected shape {list(shape)})")
        if tuple(tensors[name].shape) != tuple(shape):
            raise ContractError(f"tensor {name}: shape {list(tensors[name].shape)}, expected {list(shape)}")
    for name in tensors:
        if name not in shapes:
            raise ContractError(f"tensor {name}: not used by the config (extra)")
    # A one-expert gate is all or nothing.
    for task in config["tasks"]:
        gate_names = [n for n in optional if n.startswith(f"tasks.{task['name']}.gate.")]
        present = [n for n in gate_names if n in tensors]
        if present and len(present) != len(gate_names):
            missing = sorted(set(gate_names) - set(present))[0]
            raise ContractError(f"tensor {missing}: missing (gate partly present)")


# --------------------------------------------------------------------------
# Inputs -> x0
# --------------------------------------------------------------------------


def _dense_rows(inp: dict, value, n: int) -> np.ndarray:
    """Request JSON for one dense input -> [N, dim] float64 (NaN for null)."""
    name, dim = inp["name"], int(inp["dim"])

    def row(values, where: str) -> list:
        if not isinstance(values, list) or len(values) != dim:
            raise ContractError(f"input {name}: {where}: expected {dim} values")
        out = []
        for v in values:
            if v is None:
                out.append(math.nan)
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ContractError(f"input {name}: {where}: not a number: {v!r}")
            else:
                out.append(float(v))
        return out

    if inp["scope"] == "request":
        return np.tile(np.array([row(value, "request")], dtype=np.float64), (n, 1))
    if not isinstance(value, list) or len(value) != n:
        raise ContractError(f"input {name}: expected {n} candidate rows")
    return np.array([row(v, f"candidate {i}") for i, v in enumerate(value)], dtype=np.float64).reshape(n, dim)


def dense_features(inp: dict, tensors: dict, value, n: int) -> np.ndarray:
    """Transformed dense input [N, dim]: log1p, standardize, clip; missing policy."""
    name = inp["name"]
    raw = _dense_rows(inp, value, n)
    missing = ~np.isfinite(raw)
    if missing.any() and inp.get("missing") != "zero":
        cand = int(np.argwhere(missing)[0][0])
        where = "request" if inp["scope"] == "request" else f"candidate {cand}"
        raise ContractError(f"input {name}: non-finite value ({where})")
    x = np.where(missing, 0.0, raw)
    transforms = inp.get("transform") or []
    if "log1p" in transforms:
        x = np.sign(x) * np.log1p(np.abs(x))
    if "standardize" in transforms:
        x = (x - tensors[f"inputs.{name}.mean"]) / tensors[f"inputs.{name}.std"]
    if inp.get("clip") is not None:
        c = float(inp["clip"])
        x = np.clip(x, -c, c)
    return np.where(missing, 0.0, x)


def _pool_bag(inp: dict, table: np.ndarray, bag, where: str) -> np.ndarray:
    name = inp["name"]
    if not isinstance(bag, list):
        raise ContractError(f"input {name}: {where}: a bag must be a list of ids")
    rows = table.shape[0]
    indices = []
    for ident in bag:
        if isinstance(ident, bool) or not isinstance(ident, int) or not (0 <= ident <= U64_MAX):
            raise ContractError(f"input {name}: {where}: id {ident!r} is not a u64")
        indices.append(ident % rows)  # exact: Python ints, no float rounding
    if not indices:
        return np.zeros(table.shape[1])
    total = table[indices].sum(axis=0)
    return total / len(indices) if inp["pooling"] == "mean" else total


def sparse_features(inp: dict, tensors: dict, value, n: int) -> np.ndarray:
    """Pooled sparse input [N, dim]."""
    name = inp["name"]
    table = tensors[f"inputs.{name}.embedding"]
    if inp["scope"] == "request":
        if not isinstance(value, list) or len(value) != 1:
            raise ContractError(f"input {name}: request scope takes exactly one bag")
        return np.tile(_pool_bag(inp, table, value[0], "request"), (n, 1))
    if not isinstance(value, list) or len(value) != n:
        raise ContractError(f"input {name}: expected {n} candidate bags")
    pooled = [_pool_bag(inp, table, bag, f"candidate {i}") for i, bag in enumerate(value)]
    return np.array(pooled, dtype=np.float64).reshape(n, table.shape[1])


def build_x0(config: dict, tensors: dict, request: dict) -> np.ndarray:
    """x0 [N, D]: every input's vector, concatenated in config order."""
    n = request["n"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ContractError(f"request: n must be a non-negative integer, got {n!r}")
    dense_req = request.get("dense") or {}
    sparse_req = request.get("sparse") or {}
    known = {inp["name"]: inp["kind"] for inp in config["inputs"]}
    for section, given in (("dense", dense_req), ("sparse", sparse_req)):
        for name in given:
            if known.get(name) != section:
                raise ContractError(f"request: {section} input {name!r} is not a {section} input of the model")
    parts = []
    for inp in config["inputs"]:
        name = inp["name"]
        section = dense_req if inp["kind"] == "dense" else sparse_req
        if name not in section:
            raise ContractError(f"request: input {name} is missing")
        if inp["kind"] == "dense":
            parts.append(dense_features(inp, tensors, section[name], n))
        else:
            parts.append(sparse_features(inp, tensors, section[name], n))
    return np.concatenate(parts, axis=1) if parts else np.zeros((n, 0))


def gather(config: dict, x0: np.ndarray, names: list, what: str) -> np.ndarray:
    """Concatenation of the named inputs' x0 slices, in config order."""
    return np.concatenate([x0[:, a:b] for a, b in subset_slices(config, names, what)], axis=1)


# --------------------------------------------------------------------------
# Experts
# --------------------------------------------------------------------------


def expert_mlp(ex: dict, t: dict, p: str, x0: np.ndarray) -> np.ndarray:
    return mlp(x0, t, f"{p}.mlp", len(ex["hidden"]), relu_last=True)


def expert_dcnv2(ex: dict, t: dict, p: str, x0: np.ndarray) -> np.ndarray:
    x = x0
    for l in range(ex["cross_layers"]):
        q = f"{p}.cross.{l}"
        if ex.get("rank") is None:
            inner = x @ t[f"{q}.weight"].T + t[f"{q}.bias"]
        else:
            inner = (x @ t[f"{q}.down.weight"].T) @ t[f"{q}.up.weight"].T + t[f"{q}.bias"]
        x = x0 * inner + x
    if ex["structure"] == "stacked":
        return mlp(x, t, f"{p}.deep", len(ex["deep"]), relu_last=True)
    deep = mlp(x0, t, f"{p}.deep", len(ex["deep"]), relu_last=True)
    return relu(linear(np.concatenate([x, deep], axis=1), t, f"{p}.proj"))


def expert_masknet(ex: dict, t: dict, p: str, x0: np.ndarray) -> np.ndarray:
    v = layer_norm(x0, t, f"{p}.emb_ln")
    outs: list[np.ndarray] = []
    for b in range(len(ex["blocks"])):
        q = f"{p}.blocks.{b}"
        z = v if (ex["mode"] == "parallel" or b == 0) else outs[-1]
        mask = linear(relu(linear(x0, t, f"{q}.mask.0")), t, f"{q}.mask.1")
        hidden = linear(mask * z, t, f"{q}.hidden", bias=False)
        outs.append(relu(layer_norm(hidden, t, f"{q}.ln")))
    result = np.concatenate(outs, axis=1) if ex["mode"] == "parallel" else outs[-1]
    head = ex.get("head") or []
    return mlp(result, t, f"{p}.head", len(head), relu_last=True) if head else result


def bilinear_fusion(o1: np.ndarray, o2: np.ndarray, w_xy: np.ndarray, heads: int) -> np.ndarray:
    """Multi-head bilinear term of FinalMLP, batched: [N, d1], [N, d2] -> [N, H].

    w_xy (shape [k*hx*hy, H]) is read flat row-major; the flat index of
    (h, a, o, b) is (h*hx + a)*(hy*H) + o*hy + b, i.e. the flat array viewed as
    [k, hx, H, hy].
    """
    n, d1 = o1.shape
    d2 = o2.shape[1]
    hx, hy = d1 // heads, d2 // heads
    H = w_xy.size // (heads * hx * hy)
    w = w_xy.reshape(-1).reshape(heads, hx, H, hy)
    return np.einsum("nha,haob,nhb->no", o1.reshape(n, heads, hx), w, o2.reshape(n, heads, hy))


def expert_finalmlp(ex: dict, t: dict, p: str, x0: np.ndarray, config: dict) -> np.ndarray:
    n = x0.shape[0]
    streams = []
    for s in (1, 2):
        if not ex.get("feature_selection"):
            streams.append(x0)
            continue
        context_names = ex.get(f"fs{s}_context") or []
        if context_names:
            context = gather(config, x0, context_names, f"expert {ex['name']}: fs{s}_context")
        else:
            context = np.tile(t[f"{p}.fs{s}.ctx_bias"].reshape(1, -1), (n, 1))
        n_layers = len(ex.get("fs_hidden") or []) + 1
        gate = 2.0 * sigmoid(mlp(context, t, f"{p}.fs{s}.gate", n_layers, relu_last=False))
        streams.append(x0 * gate)
    o1 = mlp(streams[0], t, f"{p}.mlp1", len(ex["mlp1"]), relu_last=True)
    o2 = mlp(streams[1], t, f"{p}.mlp2", len(ex["mlp2"]), relu_last=True)
    return (linear(o1, t, f"{p}.agg.w_x") + linear(o2, t, f"{p}.agg.w_y")
            + bilinear_fusion(o1, o2, t[f"{p}.agg.w_xy"], ex["heads"]))


def expert_output(ex: dict, tensors: dict, x0: np.ndarray, config: dict) -> np.ndarray:
    p = f"experts.{ex['name']}"
    kind = ex["type"]
    if kind == "mlp":
        return expert_mlp(ex, tensors, p, x0)
    if kind == "dcnv2":
        return expert_dcnv2(ex, tensors, p, x0)
    if kind == "masknet":
        return expert_masknet(ex, tensors, p, x0)
    if kind == "finalmlp":
        return expert_finalmlp(ex, tensors, p, x0, config)
    raise ContractError(f"expert {ex['name']}: unknown type {kind!r}")


# --------------------------------------------------------------------------
# Gates, mixture, towers
# --------------------------------------------------------------------------


def gate_weights(task: dict, tensors: dict, x0: np.ndarray, config: dict) -> np.ndarray:
    """[N, E] softmax gate; [N, 1] of ones for an absent one-expert gate."""
    E = len(config["experts"])
    p = f"tasks.{task['name']}.gate"
    if E == 1 and f"{p}.0.weight" not in tensors:
        return np.ones((x0.shape[0], 1))
    names = task.get("gate_inputs")
    g = x0 if names is None else gather(config, x0, names, f"task {task['name']}: gate_inputs")
    n_layers = len(task.get("gate_hidden") or []) + 1
    return softmax(mlp(g, tensors, p, n_layers, relu_last=False))


def logits_of_x0(config: dict, tensors: dict, x0: np.ndarray) -> np.ndarray:
    """The logits [N, T] of the candidates whose x0 rows are given (float64
    tensors): experts, gates, mixtures and towers."""
    experts = [expert_output(ex, tensors, x0, config) for ex in config["experts"]]
    logits = np.zeros((x0.shape[0], len(config["tasks"])))
    for ti, task in enumerate(config["tasks"]):
        w = gate_weights(task, tensors, x0, config)
        mixture = sum(w[:, i : i + 1] * e for i, e in enumerate(experts))
        n_layers = len(task.get("tower") or []) + 1
        logits[:, ti] = mlp(mixture, tensors, f"tasks.{task['name']}.tower", n_layers, relu_last=False)[:, 0]
    return logits


def gap_on_random_x0(config: dict, tensors: dict, logits_of) -> float:
    """How far another implementation of the model is from this reference on
    the same weights: `logits_of(x0)` (x0 float64 [17, D], random) against
    `logits_of_x0`, the worst |Δlogit| / (1 + |logit|). The benchmarks'
    baselines check themselves with it before they are timed."""
    x0 = np.random.default_rng(1).standard_normal((17, feature_dim(config)))
    want = logits_of_x0(config, {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}, x0)
    got = np.asarray(logits_of(x0), dtype=np.float64)
    return float(np.max(np.abs(got - want) / (1 + np.abs(want))))


def forward(config: dict, tensors: dict, request: dict) -> tuple[np.ndarray, np.ndarray]:
    """Score one request: (logits [N, T], probabilities [N, T]), float64."""
    tensors = {name: np.asarray(v, dtype=np.float64) for name, v in tensors.items()}
    validate_tensors(config, tensors)
    logits = logits_of_x0(config, tensors, build_x0(config, tensors, request))
    return logits, sigmoid(logits)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def score_file(config: dict, tensors: dict, requests_path: str, out_path: str) -> int:
    """Score every request line; write one output line each. Returns the count."""
    count = 0
    with open(requests_path) as src, open(out_path, "w") as dst:
        for line_no, line in enumerate(src, 1):
            if not line.strip():
                continue
            try:
                logits, probs = forward(config, tensors, json.loads(line))
            except ContractError as err:
                raise ContractError(f"{requests_path}:{line_no}: {err}") from None
            dst.write(json.dumps({"logits": logits.tolist(), "probabilities": probs.tolist()}) + "\n")
            count += 1
    return count


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="numpy reference scorer for the mmoe model contract")
    ap.add_argument("--config", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--round-f16", action="store_true", help="round every tensor to float16 first")
    args = ap.parse_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    tensors = load_safetensors(args.weights)
    if args.round_f16:
        tensors = round_f16(tensors)
    try:
        count = score_file(config, tensors, args.requests, args.out)
    except ContractError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"scored {count} requests -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
