"""Reads a packed .mmoe file (docs/FORMAT.md) into numpy: config and tensors
in PyTorch layout. Used by the GPU check's PyTorch baseline, so that PyTorch
runs on exactly the engine's (fp16-rounded) weights."""
from __future__ import annotations

import json
import struct

import numpy as np

HEADER = struct.Struct("<8s6I12Q")  # magic, 6 u32, 12 u64 (…, reserved[2]) = 128 bytes
RECORD = struct.Struct("<IIBBBBI4QQQQQ")  # 80 bytes
PANEL = 32


def read_mmoe(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    data = open(path, "rb").read()
    (magic, version, endian, layout_version, dtype, count, flags,
     config_off, config_len, table_off, table_len, names_off, names_len,
     data_off, data_len, file_len, checksum, _r0, _r1) = HEADER.unpack_from(data, 0)
    if magic != b"MMOEPACK" or version != 1 or layout_version not in (1, 2):
        raise ValueError(f"{path}: not an mmoe file of format version 1, layout version 1 or 2")
    config = json.loads(data[config_off:config_off + config_len])
    hy_of = bilinear_hy(config)
    element = {1: np.float32, 2: np.float16}[dtype]
    tensors = {}
    for i in range(count):
        (name_off, name_len, _dt, layout, rank, _align, _r, s0, s1, s2, s3,
         offset, nbytes, _checksum, _r1) = RECORD.unpack_from(data, table_off + i * RECORD.size)
        name = data[names_off + name_off:names_off + name_off + name_len].decode()
        shape = [s0, s1, s2, s3][:rank]
        values = np.frombuffer(data, dtype=element, count=nbytes // np.dtype(element).itemsize, offset=offset)
        if layout == 2:  # panel32: [panels][k][32] -> [n, k]
            n, k = shape
            panels = values.reshape(-1, k, PANEL).transpose(0, 2, 1).reshape(-1, k)
            values = panels[:n]
        if layout == 3:  # bilinear32: the panels of W'[o, j*hy + b] = flat[j*hy*H + o*hy + b]
            k, h = shape
            hy = hy_of[name]
            w = values.reshape(-1, k, PANEL).transpose(0, 2, 1).reshape(-1, k)[:h]
            values = w.reshape(h, k // hy, hy).transpose(1, 0, 2)
        tensors[name] = values.reshape(shape).astype(np.float32)
    return config, tensors


def bilinear_hy(config: dict) -> dict[str, int]:
    """hy = d2 / heads of each FinalMLP expert's agg.w_xy (d2: mlp2's last
    width, or x0's width when mlp2 is empty)."""
    d = sum(i["dim"] for i in config["inputs"])
    out = {}
    for e in config["experts"]:
        if e["type"] == "finalmlp":
            d2 = e["mlp2"][-1] if e["mlp2"] else d
            out[f"experts.{e['name']}.agg.w_xy"] = d2 // e["heads"]
    return out
