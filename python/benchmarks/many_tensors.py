"""Header-only operations on a mixture-of-experts-shaped checkpoint, against ``safetensors``.

    python python/benchmarks/many_tensors.py --tensors 18000 [--reps 7]
    python python/benchmarks/many_tensors.py --file model.safetensors --numpack model.npk

Makes (or takes, with ``--file``) a SafeTensors file of ``--tensors`` small BF16 tensors
named like a MoE checkpoint's experts (``model.layers.{l}.mlp.experts.{e}.{gate,up,down}_proj
.weight``, 128 experts per layer), converts it to a NumPack directory with npkio (or takes
``--numpack``), then times, in paired rounds:

- ``safetensors`` listing (the yardstick): ``safe_open(path, "np")``, ``keys()``, and
  ``get_slice(k).get_shape()`` for every key;
- ``npkio.get_safetensors_metadata(path)``;
- ``npkio.iter_safetensors(path)``: every ``(name, array)`` pair, touching no tensor byte;
- ``safetensors`` ``get_tensor`` of every key (reads every tensor: for information only);
- ``npkio.NumPack(path)`` and its list of names; and the library's open alone (the
  ``npkio_numpack_create`` call ``NumPack`` makes, through ``ctypes``, and the
  ``npkio_numpack_free`` its handle gets), so that the cost of the Rust open and the cost
  above it (C boundary, Python objects: the last row, per-round differences) show apart.

Everything runs in this process: each operation takes tens of milliseconds, while starting
a fresh interpreter and importing NumPy costs about a hundred, which would bury the
difference being measured; and a program lists a checkpoint from a running interpreter. So
one untimed warm-up round comes first (page cache, imports, ``ctypes`` prototypes), then
``--reps`` rounds, each running every operation once, one after the other, so that a ratio
is taken between runs seconds apart on a machine whose speed drifts. The garbage collector
is run before each timed call, not during it. Prints the medians, ranges and the median of
the per-round ratios to the yardstick, with the load average.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import npkio

EXPERTS = 128


def expert_names(count: int) -> List[str]:
    out = []
    for i in range(count):
        layer, rest = divmod(i, 3 * EXPERTS)
        expert, part = divmod(rest, 3)
        proj = ("gate_proj", "up_proj", "down_proj")[part]
        out.append(f"model.layers.{layer}.mlp.experts.{expert}.{proj}.weight")
    return out


def make_file(path: Path, count: int, rows: int, cols: int) -> None:
    """Writes the SafeTensors file directly (zeros): the header is what is measured."""
    nbytes = rows * cols * 2
    header: Dict[str, object] = {"__metadata__": {"format": "pt"}}
    for i, name in enumerate(expert_names(count)):
        header[name] = {
            "dtype": "BF16",
            "shape": [rows, cols],
            "data_offsets": [i * nbytes, (i + 1) * nbytes],
        }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.truncate(8 + len(text) + count * nbytes)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


Op = Tuple[str, Callable[[], object]]


def run_rounds(
    ops: List[Op], reps: int, verbose: bool
) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """Wall-clock and CPU seconds per run of each operation: one untimed warm-up round,
    then ``reps``."""
    wall: Dict[str, List[float]] = {name: [] for name, _ in ops}
    cpu: Dict[str, List[float]] = {name: [] for name, _ in ops}
    for rnd in range(reps + 1):
        for name, fn in ops:
            gc.collect()
            gc.disable()
            try:
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
            finally:
                gc.enable()
            if verbose:
                print(f"round {rnd}: {name}: {dt * 1e3:.2f} ms", file=sys.stderr)
            if rnd > 0:
                wall[name].append(dt)
                cpu[name].append(dc)
    return wall, cpu


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=18000, help="tensors in the made file")
    ap.add_argument("--shape", default="4x8", help="each tensor's shape (BF16), ROWSxCOLS")
    ap.add_argument("--reps", type=int, default=7, help="timed rounds (default 7)")
    ap.add_argument("--file", type=Path, help="use this SafeTensors file instead of making one")
    ap.add_argument("--numpack", type=Path, help="use this NumPack directory (with --file)")
    ap.add_argument("--dir", type=Path, help="where to make the files (default: a temp dir)")
    ap.add_argument(
        "--no-reads", action="store_true", help="skip the row that reads every tensor"
    )
    ap.add_argument("--verbose", action="store_true", help="print every run")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    try:
        from safetensors import safe_open
    except ImportError:
        safe_open = None
        print("(the safetensors package is not installed: no yardstick rows)", file=sys.stderr)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        src = args.file
        if src is None:
            rows, cols = (int(x) for x in args.shape.lower().split("x"))
            src = Path(tmp) / "model.safetensors"
            make_file(src, args.tensors, rows, cols)
        npk = args.numpack
        if npk is None:
            npk = Path(tmp) / "model.npk"
            npkio.from_safetensors_file(src, npk)
        src_s, npk_s = str(src), str(npk)
        count = len(npkio.get_safetensors_metadata(src_s)["tensors"])

        def st_list() -> object:
            with safe_open(src_s, framework="np") as f:
                return [f.get_slice(k).get_shape() for k in f.keys()]

        def st_get_all() -> object:
            n = 0
            with safe_open(src_s, framework="np") as f:
                for k in f.keys():
                    n += f.get_tensor(k).nbytes
            return n

        def ours_list() -> object:
            return npkio.get_safetensors_metadata(src_s)

        def ours_iter() -> object:
            n = 0
            for _name, arr in npkio.iter_safetensors(src_s):
                n += arr.nbytes
            return n

        def ours_numpack() -> object:
            with npkio.NumPack(npk_s) as p:
                return p.get_member_list()

        clib = npkio._clib
        path_b = os.fsencode(npk_s)

        def rust_open() -> object:
            # What NumPack() calls, and the free its handle gets when the object goes.
            out = ctypes.c_void_p()
            status = clib.npkio_numpack_create(path_b, False, ctypes.byref(out))
            if status != 0:
                raise RuntimeError(f"npkio_numpack_create: status {status}")
            clib.npkio_numpack_free(out)
            return None

        ops: List[Op] = []
        if safe_open is not None:
            ops.append(("safetensors safe_open: keys + get_shape", st_list))
        ops += [
            ("npkio.get_safetensors_metadata", ours_list),
            ("npkio.iter_safetensors (zero-copy)", ours_iter),
        ]
        if safe_open is not None and not args.no_reads:
            ops.append(("safetensors get_tensor of all (reads)", st_get_all))
        ops += [
            ("npkio.NumPack + get_member_list", ours_numpack),
            ("  of which the C open + free alone", rust_open),
        ]
        # The same answers, checked once before timing.
        names = list(ours_list()["tensors"])
        if safe_open is not None:
            with safe_open(src_s, framework="np") as f:
                assert sorted(f.keys()) == sorted(names)
        assert sorted(names) == ours_numpack()
        assert [n for n, _ in npkio.iter_safetensors(src_s)] == names

        wall, cpu = run_rounds(ops, args.reps, args.verbose)

    base_name = ops[0][0]
    listing = "npkio.get_safetensors_metadata"
    print(
        f"{count} tensors, {args.reps} rounds after one warm-up round, in one process "
        f"(Python {sys.version.split()[0]}, npkio {npkio.__version__}); "
        "ratios: median (range) of the per-round ratios"
    )
    yard = "x safetensors" if safe_open else "x listing"
    print(
        f"{'operation':40} {'wall ms':>8} {'range':>13} {'CPU ms':>8} {'us/tensor':>9} "
        f"{yard + ' (wall)':>22} {yard + ' (CPU)':>21} {'x listing (wall)':>18}"
    )

    def ratio(times: Dict[str, List[float]], a: str, b: str) -> str:
        if a == b:
            return "1.00"
        r = [x / y for x, y in zip(times[a], times[b])]
        return f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})"

    for name, _ in ops:
        t = wall[name]
        med = statistics.median(t)
        rng = f"{min(t) * 1e3:.1f}-{max(t) * 1e3:.1f}"
        print(
            f"{name:40} {med * 1e3:8.1f} {rng:>13} {statistics.median(cpu[name]) * 1e3:8.1f} "
            f"{med / count * 1e6:9.2f} {ratio(wall, name, base_name):>22} "
            f"{ratio(cpu, name, base_name):>21} {ratio(wall, name, listing):>18}"
        )
    above = [a - b for a, b in zip(wall["npkio.NumPack + get_member_list"], wall[ops[-1][0]])]
    above_cpu = [a - b for a, b in zip(cpu["npkio.NumPack + get_member_list"], cpu[ops[-1][0]])]
    print(
        f"{'  Python above the C open (difference)':40} {statistics.median(above) * 1e3:8.1f} "
        f"{f'{min(above) * 1e3:.1f}-{max(above) * 1e3:.1f}':>13} "
        f"{statistics.median(above_cpu) * 1e3:8.1f}"
    )
    print(f"load average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
