"""Registers, spills and shared memory of every Triton kernel configuration, without a GPU.

Triton compiles for a named target (``GPUTarget``) with its bundled ptxas, so the per-thread
register count and the local-memory stack (spills) of each autotune configuration can be read
from the cubin on any machine: the compiler's view of what limits a kernel, to check before a
GPU run is spent on it.

    python -m bench.triton_resources [--arch 90a 80] [--out bench/results/triton-resources]

Prints a markdown table; writes ``resources.json`` and ``resources.md`` under ``--out``.
Spilling shows as STACK > 0 bytes per thread. Needs a Triton build with the NVIDIA backend
(the PyPI wheels have it); runs on CPU-only torch.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from vaopd_kernels import KernelOptions
from vaopd_kernels.backends.triton import _codes, _config, backward, matmul, stats

# The launches the backend makes at the headline shape (bf16, N = 8192, Ds = 2048, Dt = 4096,
# V = 151,936): kernel, constexpr flags, and the integer arguments it sees there. Integers are
# specialised as Triton's JIT does (1 becomes a constant, multiples of 16 carry divisibility 16),
# so the compiler sees the same contiguity it sees on a GPU.
N, V, DS, DT = 8192, 151_936, 2048, 4096
COLS = backward._chunk_columns(N, V, 2, KernelOptions().triton_workspace_bytes)  # backward vocab chunk (bf16)
_SHAPE = dict(N=N, V=V, Ds=DS, Dt=DT, stride_sh=DS, stride_sw=DS, stride_th=DT, stride_tw=DT)
_REVERSE = _codes.DIV_REVERSE.value
# plain heads; "soft-capped" launches turn every transform on (bias, soft-cap) on both heads
_PLAIN = dict(S_BIAS=False, S_CAP=False, T_BIAS=False, T_CAP=False)
_CAPPED = dict(S_BIAS=True, S_CAP=True, T_BIAS=True, T_CAP=True)
_STATS = dict(HAS_S=False, HAS_T=False, HAS_D=False, HAS_Y=False, CROSS=_codes.DIV_NONE.value, MIN_T=False,
              VISUAL=False, **_PLAIN)
_MATMUL = dict(stride_bk=DS, stride_bn=1, stride_cm=DS)
LAUNCHES = {
    "stats: teacher + pixelated (VA)": (stats._stats_kernel, {**_STATS, "HAS_T": True, "HAS_D": True,
                                                                     "HAS_Y": True}, _SHAPE, {}),
    "stats: teacher + pixelated (divergence)": (stats._stats_kernel, {**_STATS, "HAS_T": True, "HAS_D": True,
                                                                             "VISUAL": True}, _SHAPE, {}),
    "stats: student + teacher, reverse KL": (stats._stats_kernel, {**_STATS, "HAS_S": True, "HAS_T": True,
                                                                          "HAS_Y": True, "CROSS": _REVERSE}, _SHAPE, {}),
    "stats: three views (va_kl)": (stats._stats_kernel, {**_STATS, "HAS_S": True, "HAS_T": True,
                                                               "HAS_D": True, "HAS_Y": True, "CROSS": _REVERSE}, _SHAPE, {}),
    "stats: three views (va_kl), soft-capped": (stats._stats_kernel, {
        **_STATS, **_CAPPED, "HAS_S": True, "HAS_T": True, "HAS_D": True, "HAS_Y": True, "CROSS": _REVERSE},
        _SHAPE, {}),
    # with the gradient filter on, the forward also keeps the teacher's smallest logit
    "stats: student + teacher, reverse KL, filtered": (stats._stats_kernel, {
        **_STATS, "HAS_S": True, "HAS_T": True, "HAS_Y": True, "CROSS": _REVERSE, "MIN_T": True}, _SHAPE, {}),
}
_FLAG_COLS = COLS // 64
_MM_FLAGS = dict(LIST_STAGES=matmul._LIST_STAGES)
_DZ_INTS = {**_SHAPE, "v_begin": 0, "v_end": COLS, "Vc": COLS, "stride_dz": COLS, "flag_cols": _FLAG_COLS}
LAUNCHES["dlogits: reverse KL, soft-capped"] = (backward.dlogits_kernel, dict(
    MODE=_REVERSE, FILTER=False, FLAG_BLOCK=64, **_CAPPED), _DZ_INTS, {})
for _filter in (False, True):
    _tag, _flags = (", filtered" if _filter else ""), dict(FILTER=_filter, FLAG_BLOCK=64)
    LAUNCHES.update({
        f"dlogits: reverse KL{_tag}": (backward.dlogits_kernel, dict(MODE=_REVERSE, **_flags, **_PLAIN), _DZ_INTS, {}),
        f"matmul: d head = dz^T h{_tag}": (matmul._matmul_kernel, dict(ACCUMULATE=False, ORDER_B=_filter,
                                                                            ORDER_C=False, **_flags, **_MM_FLAGS),
                                           {**_MATMUL, "M": COLS, "N": DS, "K": N, "stride_am": 1, "stride_ak": COLS,
                                            "stride_fm": 1, "stride_fk": _FLAG_COLS}, {"c_ptr": "*bf16"}),
        f"matmul: d hidden += dz W{_tag}": (matmul._matmul_kernel, dict(ACCUMULATE=True, ORDER_B=False,
                                                                             ORDER_C=_filter, **_flags, **_MM_FLAGS),
                                            {**_MATMUL, "M": N, "N": DS, "K": COLS, "stride_am": COLS, "stride_ak": 1,
                                             "stride_fm": _FLAG_COLS, "stride_fk": 1}, {"c_ptr": "*fp32"}),
    })
_POINTER_TYPES = {"sh_ptr": "*bf16", "sw_ptr": "*bf16", "th_ptr": "*bf16", "td_ptr": "*bf16", "tw_ptr": "*bf16",
                  "sb_ptr": "*bf16", "tb_ptr": "*bf16",
                  "a_ptr": "*bf16", "b_ptr": "*bf16", "dz_ptr": "*bf16", "y_ptr": "*i64", "flag_ptr": "*i8",
                  "order_ptr": "*i32", "live_ptr": "*i32"}
_F32_SCALARS = {"s_mul", "s_cap", "t_mul", "t_cap", "log_beta", "log_1m_beta", "one_m_beta", "filter_eps"}


@dataclass
class Row:
    launch: str
    arch: str
    config: str
    registers: int
    stack_bytes: int
    shared_bytes: int


def _specialise(fn, flags: Dict[str, object], ints: Dict[str, int], pointers: Dict[str, str]):
    """(signature, constexprs, attrs) for ASTSource, as the JIT would build them for these arguments."""
    signature, constexprs, attrs = {}, dict(flags), {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, _POINTER_TYPES.get(name, "*fp32"))
            attrs[(index,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif name in _F32_SCALARS:
            signature[name] = "fp32"
        elif ints[name] == 1:
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32"
            if ints[name] % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def _cuobjdump() -> str:
    import triton.backends.nvidia as nvidia
    return os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")


def _resource_usage(cubin: bytes, workdir: Path) -> Dict[str, int]:
    path = workdir / "kernel.cubin"
    path.write_bytes(cubin)
    text = subprocess.run([_cuobjdump(), "-res-usage", str(path)], capture_output=True, text=True,
                          check=True).stdout
    found = dict(re.findall(r"(REG|STACK|SHARED):(\d+)", text))
    return {k: int(v) for k, v in found.items()}


def _target(arch: str) -> GPUTarget:
    return GPUTarget("cuda", int(arch.rstrip("a")), 32)


def measure(arch: str, workdir: Path, only: str = "", max_configs: int = 0) -> List[Row]:
    """Rows for every launch whose name contains ``only``, each config (the first ``max_configs``)."""
    rows = []
    for launch, (tuned, flags, ints, pointers) in LAUNCHES.items():
        if only not in launch:
            continue
        for config in tuned.configs[:max_configs or None]:
            flags = {"CAST_F32": False, "PRECISION": "tf32", **flags, **config.kwargs}
            source = ASTSource(tuned.fn, *_specialise(tuned.fn, flags, ints, pointers))
            compiled = triton.compile(source, target=_target(arch),
                                      options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
            usage = _resource_usage(compiled.asm["cubin"], workdir)
            label = (", ".join(f"{k}={v}" for k, v in config.kwargs.items())
                     + f", warps={config.num_warps}, stages={config.num_stages}")
            # Dynamic shared memory (Triton's pipelining buffers) is in the metadata, static in the cubin.
            rows.append(Row(launch, f"sm_{arch}", label, usage.get("REG", -1), usage.get("STACK", -1),
                            int(compiled.metadata.shared) + usage.get("SHARED", 0)))
    return rows


def markdown(rows: List[Row]) -> str:
    lines = ["| launch | arch | config | registers | spill stack (B/thread) | shared (KiB) |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r.launch} | {r.arch} | {r.config} | {r.registers} | {r.stack_bytes} | "
                     f"{r.shared_bytes / 1024:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["90a", "80"], help="targets, e.g. 90a 80")
    parser.add_argument("--out", type=Path, default=None, help="folder for resources.json / resources.md")
    parser.add_argument("--launch", default="", help="only launches whose name contains this")
    parser.add_argument("--max-configs", type=int, default=0, help="first N configurations of each (0: all)")
    args = parser.parse_args(argv)
    if _config.INTERPRET:
        parser.error("TRITON_INTERPRET=1 replaces the kernels and their configurations: unset it")
    with tempfile.TemporaryDirectory() as workdir:  # cubins pass through here, never into --out
        rows = [row for arch in args.arch for row in measure(arch, Path(workdir), args.launch, args.max_configs)]
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"triton": triton.__version__, "python": sys.version.split()[0],
                "date": datetime.date.today().isoformat(), "shape": dict(N=N, V=V, Ds=DS, Dt=DT, dtype="bf16")}
        (args.out / "resources.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]},
                                                            indent=1))
        (args.out / "resources.md").write_text(
            f"Triton {triton.__version__}, compiled offline on {meta['date']} (`python -m bench.triton_resources`), "
            f"bf16, specialised for N={N}, Ds={DS}, Dt={DT}, V={V}.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
