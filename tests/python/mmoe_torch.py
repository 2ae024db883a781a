"""MODEL.md as a PyTorch module, written the way a training team writes one.

This is the training side's view of the contract: ``torch.nn`` modules
(``Linear``, ``LayerNorm``, ``embedding_bag``, ``ModuleDict``), batched over
candidates, trainable, whose ``state_dict()`` names are the contract's tensor
names with no renaming. It is independent of the numpy reference
(``mmoe_ref.py``) and of the engine: ``test_torch_parity.py`` trains it a few
steps, exports it to safetensors, packs it with ``mmoe pack`` and checks the
engine's scores against this module's forward pass.

Two things the config does not say are taken as arguments: the width of a
FinalMLP's learned context (``fs<s>.ctx_bias``, shape ``[c]`` or ``[1, c]``)
and whether a one-expert task has a gate (``has_gate``).

Requests use the JSONL format of ``mmoe_ref.py`` (``null`` for a missing dense
value); ``batch(config, request)`` turns one into tensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LN_EPS = 1e-5  # MODEL.md: LayerNorm's epsilon, torch's default too


def mlp_layers(in_width: int, widths: list, bias: bool = True) -> nn.ModuleList:
    """The Linear layers of an ``MLP [d1, ..., dk]``: state_dict names ``<j>.weight``, ``<j>.bias``."""
    layers, width = [], in_width
    for out in widths:
        layers.append(nn.Linear(width, out, bias=bias))
        width = out
    return nn.ModuleList(layers)


def run_mlp(layers: nn.ModuleList, x: torch.Tensor, relu_last: bool) -> torch.Tensor:
    for j, layer in enumerate(layers):
        x = layer(x)
        if j + 1 < len(layers) or relu_last:
            x = torch.relu(x)
    return x


def out_width(layers: nn.ModuleList, in_width: int) -> int:
    return layers[-1].out_features if len(layers) else in_width


class DenseInput(nn.Module):
    """A dense input: ``mean``/``std`` buffers when standardized (data statistics, not trained)."""

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = spec
        self.transform = list(spec.get("transform") or [])
        if "standardize" in self.transform:
            self.register_buffer("mean", torch.zeros(spec["dim"]))
            self.register_buffer("std", torch.ones(spec["dim"]))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw
        if "log1p" in self.transform:
            x = torch.sign(x) * torch.log1p(torch.abs(x))
        if "standardize" in self.transform:
            x = (x - self.mean) / self.std
        if self.spec.get("clip") is not None:
            c = float(self.spec["clip"])
            x = torch.clamp(x, -c, c)
        if self.spec.get("missing") == "zero":
            # The transformed value of a missing (non-finite) element is 0.
            x = torch.where(torch.isfinite(raw), x, torch.zeros_like(x))
        elif not bool(torch.isfinite(raw).all()):
            raise ValueError(f"input {self.spec['name']}: non-finite value and no missing policy")
        return x


class SparseInput(nn.Module):
    """A sparse input: the ``embedding`` table, pooled per bag by ``embedding_bag``."""

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = spec
        self.embedding = nn.Parameter(torch.randn(spec["rows"], spec["dim"]))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        # embedding_bag gives zeros for an empty bag, as the contract asks.
        return F.embedding_bag(ids, self.embedding, offsets, mode=self.spec["pooling"])


class CrossLayer(nn.Module):
    """One DCNv2 cross layer: ``x0 * (W x + b) + x``, W full or ``up @ down``."""

    def __init__(self, width: int, rank):
        super().__init__()
        if rank is None:
            self.weight = nn.Parameter(torch.empty(width, width))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        else:
            self.down = nn.Linear(width, rank, bias=False)
            self.up = nn.Linear(rank, width, bias=False)
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        wx = F.linear(x, self.weight) if hasattr(self, "weight") else self.up(self.down(x))
        return x0 * (wx + self.bias) + x


class Dcnv2(nn.Module):
    def __init__(self, spec: dict, D: int, H: int):
        super().__init__()
        self.parallel = spec["structure"] == "parallel"
        self.cross = nn.ModuleList(CrossLayer(D, spec.get("rank")) for _ in range(spec["cross_layers"]))
        self.deep = mlp_layers(D, spec["deep"])
        if self.parallel:
            self.proj = nn.Linear(D + spec["deep"][-1], H)

    def forward(self, x0: torch.Tensor, inputs: dict) -> torch.Tensor:
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        if not self.parallel:
            return run_mlp(self.deep, x, relu_last=True)
        d = run_mlp(self.deep, x0, relu_last=True)
        return torch.relu(self.proj(torch.cat([x, d], dim=1)))


class MaskBlock(nn.Module):
    def __init__(self, D: int, mask_hidden: int, in_width: int, out: int):
        super().__init__()
        self.mask = nn.ModuleList([nn.Linear(D, mask_hidden), nn.Linear(mask_hidden, in_width)])
        self.hidden = nn.Linear(in_width, out, bias=False)
        self.ln = nn.LayerNorm(out, eps=LN_EPS)

    def forward(self, x0: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        mask = self.mask[1](torch.relu(self.mask[0](x0)))
        return torch.relu(self.ln(self.hidden(mask * z)))


class MaskNet(nn.Module):
    def __init__(self, spec: dict, D: int, H: int):
        super().__init__()
        self.serial = spec["mode"] == "serial"
        self.emb_ln = nn.LayerNorm(D, eps=LN_EPS)
        blocks, width = [], D
        for out in spec["blocks"]:
            blocks.append(MaskBlock(D, spec["mask_hidden"], width if self.serial else D, out))
            width = out
        self.blocks = nn.ModuleList(blocks)
        result = spec["blocks"][-1] if self.serial else sum(spec["blocks"])
        self.head = mlp_layers(result, spec["head"])

    def forward(self, x0: torch.Tensor, inputs: dict) -> torch.Tensor:
        v = self.emb_ln(x0)
        if self.serial:
            z = v
            for block in self.blocks:
                z = block(x0, z)
            result = z
        else:
            result = torch.cat([block(x0, v) for block in self.blocks], dim=1)
        return run_mlp(self.head, result, relu_last=True)


class FeatureSelection(nn.Module):
    """FinalMLP's gate of one stream: ``2 sigmoid(MLP(context))``."""

    def __init__(self, context_width: int, hidden: list, D: int, learned_shape):
        super().__init__()
        if learned_shape is not None:
            self.ctx_bias = nn.Parameter(torch.randn(*learned_shape))
        self.gate = mlp_layers(context_width, list(hidden) + [D])

    def forward(self, context, n: int) -> torch.Tensor:
        if context is None:
            context = self.ctx_bias.reshape(1, -1).expand(n, -1)
        return 2.0 * torch.sigmoid(run_mlp(self.gate, context, relu_last=False))


class Aggregation(nn.Module):
    """FinalMLP's multi-head bilinear fusion, the common PyTorch way: ``w_xy``
    viewed as ``[k, hx, hy·H]``, the product as ``[k, H, hy]``."""

    def __init__(self, d1: int, d2: int, H: int, heads: int):
        super().__init__()
        self.heads, self.H = heads, H
        self.hx, self.hy = d1 // heads, d2 // heads
        self.w_x = nn.Linear(d1, H)
        self.w_y = nn.Linear(d2, H)
        self.w_xy = nn.Parameter(torch.empty(heads * self.hx * self.hy, H))
        nn.init.xavier_normal_(self.w_xy)

    def forward(self, o1: torch.Tensor, o2: torch.Tensor) -> torch.Tensor:
        n, k = o1.shape[0], self.heads
        head_x = o1.reshape(n, k, 1, self.hx)
        head_y = o2.reshape(n, k, self.hy, 1)
        t = torch.matmul(head_x, self.w_xy.reshape(k, self.hx, self.hy * self.H))  # [n, k, 1, hy·H]
        xy = torch.matmul(t.reshape(n, k, self.H, self.hy), head_y).squeeze(-1)  # [n, k, H]
        return self.w_x(o1) + self.w_y(o2) + xy.sum(dim=1)


class FinalMlp(nn.Module):
    def __init__(self, spec: dict, D: int, H: int, input_dims: dict, ctx_shapes: dict):
        super().__init__()
        self.spec = spec
        self.feature_selection = bool(spec["feature_selection"])
        if self.feature_selection:
            for s in (1, 2):
                names = spec.get(f"fs{s}_context") or []
                width = sum(input_dims[name] for name in names) if names else ctx_shapes[s][-1]
                fs = FeatureSelection(width, spec.get("fs_hidden") or [], D, None if names else ctx_shapes[s])
                self.add_module(f"fs{s}", fs)
        self.mlp1 = mlp_layers(D, spec["mlp1"])
        self.mlp2 = mlp_layers(D, spec["mlp2"])
        self.agg = Aggregation(spec["mlp1"][-1], spec["mlp2"][-1], H, spec["heads"])

    def forward(self, x0: torch.Tensor, inputs: dict) -> torch.Tensor:
        streams = [x0, x0]
        if self.feature_selection:
            for s in (1, 2):
                names = self.spec.get(f"fs{s}_context") or []
                context = inputs["select"](names) if names else None
                streams[s - 1] = x0 * getattr(self, f"fs{s}")(context, x0.shape[0])
        o1 = run_mlp(self.mlp1, streams[0], relu_last=True)
        o2 = run_mlp(self.mlp2, streams[1], relu_last=True)
        return self.agg(o1, o2)


class Mlp(nn.Module):
    def __init__(self, spec: dict, D: int, H: int):
        super().__init__()
        self.mlp = mlp_layers(D, spec["hidden"])

    def forward(self, x0: torch.Tensor, inputs: dict) -> torch.Tensor:
        return run_mlp(self.mlp, x0, relu_last=True)


class Task(nn.Module):
    def __init__(self, spec: dict, gate_width: int, experts: int, H: int, has_gate: bool):
        super().__init__()
        self.spec = spec
        if has_gate:
            self.gate = mlp_layers(gate_width, list(spec.get("gate_hidden") or []) + [experts])
        self.tower = mlp_layers(H, list(spec.get("tower") or []) + [1])

    def forward(self, g: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
        """Logits [n] from the gate input g [n, ·] and expert outputs [n, E, H]."""
        if hasattr(self, "gate"):
            w = torch.softmax(run_mlp(self.gate, g, relu_last=False), dim=1)
        else:
            w = torch.ones(stacked.shape[0], 1, dtype=stacked.dtype)
        m = torch.einsum("ne,neh->nh", w, stacked)
        return run_mlp(self.tower, m, relu_last=False).squeeze(1)


class MmoeModel(nn.Module):
    """The whole model of MODEL.md. ``forward(dense, bags, n)`` gives logits [n, tasks]."""

    def __init__(self, config: dict, ctx_shapes: dict | None = None, has_gate: dict | None = None):
        super().__init__()
        self.config = config
        D = sum(inp["dim"] for inp in config["inputs"])
        H = config["expert_dim"]
        input_dims = {inp["name"]: inp["dim"] for inp in config["inputs"]}
        self.inputs = nn.ModuleDict(
            (inp["name"], DenseInput(inp) if inp["kind"] == "dense" else SparseInput(inp)) for inp in config["inputs"])
        kinds = {"mlp": Mlp, "dcnv2": Dcnv2, "masknet": MaskNet}
        experts = {}
        for ex in config["experts"]:
            if ex["type"] == "finalmlp":
                experts[ex["name"]] = FinalMlp(ex, D, H, input_dims, (ctx_shapes or {}).get(ex["name"], {}))
            else:
                experts[ex["name"]] = kinds[ex["type"]](ex, D, H)
        self.experts = nn.ModuleDict(experts)
        E = len(config["experts"])
        tasks = {}
        for task in config["tasks"]:
            names = task.get("gate_inputs")
            width = sum(input_dims[name] for name in names) if names is not None else D
            gate = E > 1 or (has_gate or {}).get(task["name"], True)
            tasks[task["name"]] = Task(task, width, E, H, gate)
        self.tasks = nn.ModuleDict(tasks)

    def features(self, dense: dict, bags: dict, n: int) -> dict:
        """Each input's [n, dim] features (request scope repeated per candidate)."""
        out = {}
        for inp in self.config["inputs"]:
            name = inp["name"]
            if inp["kind"] == "dense":
                value = self.inputs[name](dense[name])
            else:
                value = self.inputs[name](*bags[name])
            out[name] = value.expand(n, -1) if inp["scope"] == "request" else value
        return out

    def forward(self, dense: dict, bags: dict, n: int) -> torch.Tensor:
        parts = self.features(dense, bags, n)
        order = [inp["name"] for inp in self.config["inputs"]]
        x0 = torch.cat([parts[name] for name in order], dim=1)

        def select(names):  # a subset of inputs, always in config order
            return torch.cat([parts[name] for name in order if name in names], dim=1)

        context = {"select": select}
        stacked = torch.stack([self.experts[ex["name"]](x0, context) for ex in self.config["experts"]], dim=1)
        logits = []
        for task in self.config["tasks"]:
            names = task.get("gate_inputs")
            g = select(names) if names is not None else x0
            logits.append(self.tasks[task["name"]](g, stacked))
        return torch.stack(logits, dim=1)


def batch(config: dict, request: dict, dtype=torch.float64) -> tuple[dict, dict, int]:
    """One JSONL request (mmoe_ref.py's format) as ``forward``'s tensors."""
    n = int(request["n"])
    dense, bags = {}, {}
    for inp in config["inputs"]:
        name = inp["name"]
        if inp["kind"] == "dense":
            value = request["dense"][name]
            rows = [value] if inp["scope"] == "request" else value
            dense[name] = torch.tensor([[math.nan if v is None else v for v in row] for row in rows], dtype=dtype)
        else:
            ids, offsets = [], []
            for bag in request["sparse"][name]:
                offsets.append(len(ids))
                ids.extend(int(i) % inp["rows"] for i in bag)  # u64 ids: reduce before int64
            bags[name] = (torch.tensor(ids, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64))
    return dense, bags, n
