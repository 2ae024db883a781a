#!/usr/bin/env python3
"""Compiles kernels/*.cu to PTX and cubins with NVRTC 13.0 (the PyPI wheels), no CUDA toolkit.

    python3 scripts/build_kernels.py            # writes kernels/ptx/<name>.ptx and
                                                # kernels/cubin/<name>.sm_80.cubin, .sm_90a.cubin
    python3 scripts/build_kernels.py --check    # compiles; fails if a checked-in file is stale
                                                # or a kernel spills registers on sm_90a

The PTX and cubins are checked in and embedded in the library, so the engine
needs only the driver (libcuda) at run time. PTX for compute_80 made by
NVRTC 13.0 is JIT-compiled by the driver for any GPU of compute capability
8.0 or newer, and loads with driver 580 (CUDA 13.0) or newer: the NVRTC
version is pinned to the GPU test machine's driver
(tests/python/requirements-cuda.txt). The cubins spare that JIT on the GPUs
they are made for (sm_80: compute capability 8.x; sm_90a: 9.0, H100 and
H200): a process that starts on a machine without the driver's JIT cache
(a fresh container) loads them at once. NVRTC's output is deterministic,
so `--check` compares bytes.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"
ARCH = "compute_80"
# Cubins embedded beside the PTX (src/gpu/kernel_image.rs picks one by the
# device's compute capability). sm_90a's compile also gives ptxas' report.
# sm_90a, not sm_90: the architecture-specific target, which has the
# warpgroup MMA (wgmma) and loads only on compute capability 9.0, as an
# sm_90 cubin would.
CUBIN_ARCHS = ["sm_80", "sm_90a"]
# linear_mma64 spills one word outside its K loop (measured fast on an H200).
SPILL_BYTES_ALLOWED = 16


def find_nvidia_root() -> Path:
    """The site-packages nvidia/cu13 folder of the nvidia-cuda-nvrtc wheel."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: the nvidia-cuda-nvrtc and nvidia-cuda-runtime wheels are not installed "
                 "(pip install -r tests/python/requirements-cuda.txt)")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "cu13"
        if (candidate / "lib").is_dir():
            return candidate
    sys.exit("error: nvidia/cu13 not found in the nvidia wheels")


def load_nvrtc(root: Path):
    libs = sorted(glob.glob(str(root / "lib" / "libnvrtc.so*")))
    libs = [l for l in libs if "builtins" not in l and ".alt." not in l]
    if not libs:
        sys.exit(f"error: no libnvrtc.so in {root / 'lib'}")
    # The builtins library is found next to libnvrtc through its rpath; load it
    # first by absolute path so no LD_LIBRARY_PATH is needed.
    for builtin in glob.glob(str(root / "lib" / "libnvrtc-builtins.so*")):
        ctypes.CDLL(builtin, mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(libs[0])


def check(nvrtc, status: int, what: str, prog=None) -> None:
    if status != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        message = nvrtc.nvrtcGetErrorString(status).decode()
        log = compile_log(nvrtc, prog) if prog is not None else ""
        sys.exit(f"error: {what}: {message}\n{log}")


def compile_log(nvrtc, prog) -> str:
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, buf)
    return buf.value.decode(errors="replace")


def compile_program(nvrtc, root: Path, source: Path, arch: str, report: bool = False):
    """Compiles `source` for `arch` (compute_XX: PTX; sm_XX: a cubin). Returns
    the PTX text or the cubin bytes, and with `report` also ptxas' report
    (registers, spills, shared memory per kernel)."""
    prog = ctypes.c_void_p()
    text = source.read_bytes()
    check(nvrtc, nvrtc.nvrtcCreateProgram(ctypes.byref(prog), text, source.name.encode(), 0, None, None),
          f"create {source.name}")
    options = [f"--gpu-architecture={arch}", "--std=c++17", f"-I{KERNELS}", f"-I{root / 'include'}",
               "-default-device", "--device-as-default-execution-space"]
    if report:
        options.append("--ptxas-options=-v")
    c_options = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    status = nvrtc.nvrtcCompileProgram(prog, len(options), c_options)
    log = compile_log(nvrtc, prog)
    check(nvrtc, status, f"compile {source.name} for {arch}", prog)
    if not report and log.strip():
        # Warnings are errors: the kernels compile cleanly.
        sys.exit(f"error: {source.name} compiled for {arch} with warnings:\n{log}")
    size = ctypes.c_size_t()
    if arch.startswith("sm_"):
        check(nvrtc, nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "cubin size", prog)
        buf = ctypes.create_string_buffer(size.value)
        check(nvrtc, nvrtc.nvrtcGetCUBIN(prog, buf), "cubin", prog)
        out = buf.raw
    else:
        check(nvrtc, nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size)), "PTX size", prog)
        buf = ctypes.create_string_buffer(size.value)
        check(nvrtc, nvrtc.nvrtcGetPTX(prog, buf), "PTX", prog)
        out = buf.value.decode()
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return (out, log) if report else out


def spilling_kernels(report: str) -> list[str]:
    """Prints each kernel's registers and shared memory from ptxas' report;
    returns the kernels that spill more than a few words (a spill in the
    inner loop puts the accumulators in local memory)."""
    spills, kernel = [], None
    for line in report.splitlines():
        if "Compiling entry function" in line:
            kernel = line.split("'")[1]
        elif "Used" in line and kernel:
            print(f"  {kernel}: {line.split('ptxas info    : ')[-1].strip()}")
        elif "bytes spill stores" in line and kernel:
            stores = int(line.split("bytes stack frame,")[1].split("bytes spill stores")[0])
            if stores > SPILL_BYTES_ALLOWED:
                spills.append(f"{kernel} ({stores} bytes)")
    return spills


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if a checked-in PTX differs from a fresh compile")
    args = ap.parse_args()
    root = find_nvidia_root()
    nvrtc = load_nvrtc(root)
    major, minor = ctypes.c_int(), ctypes.c_int()
    nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    print(f"NVRTC {major.value}.{minor.value}, headers {root / 'include'}, target {ARCH}")
    stale = []

    def emit(target: Path, data, what: str) -> None:
        target.parent.mkdir(exist_ok=True)
        if args.check:
            fresh = target.exists() and (target.read_text() if isinstance(data, str) else target.read_bytes()) == data
            if not fresh:
                stale.append(target)
            print(f"compiled {target.name}: {what}" + ("" if fresh else " (checked-in file is stale)"))
        else:
            target.write_text(data) if isinstance(data, str) else target.write_bytes(data)
            print(f"wrote {target.relative_to(ROOT)}: {what}")

    for source in sorted(KERNELS.glob("*.cu")):
        ptx = compile_program(nvrtc, root, source, ARCH)
        emit(KERNELS / "ptx" / (source.stem + ".ptx"), ptx, f"{ptx.count('.entry ')} kernels, {len(ptx)} bytes")
        for arch in CUBIN_ARCHS:
            cubin, report = compile_program(nvrtc, root, source, arch, report=True)
            emit(KERNELS / "cubin" / f"{source.stem}.{arch}.cubin", cubin, f"{len(cubin)} bytes")
            if arch == "sm_90a" and args.check:
                spills = spilling_kernels(report)
                if spills:
                    print(f"error: {source.name}: kernels spill registers on sm_90a: {', '.join(spills)}")
                    return 1
    if stale:
        print("error: stale kernels (run python3 scripts/build_kernels.py and commit): "
              + ", ".join(str(s.relative_to(ROOT)) for s in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
