"""What writable arrays cost: the private (copy-on-write) mapping npkio returns by default,
against the shared read-only view (``copy=False``), a copy (``copy=True``) and the
``safetensors`` package.

    python benchmarks/writable.py [--mib 256] [--tensors 64] [--reps 5]

A SafeTensors file (and a NumPack directory converted from it) of ``--tensors`` float32
tensors totalling ``--mib`` MiB, in the page cache (read once first). For each way of
loading, the median over ``--reps`` runs, in milliseconds, of:

* ``load``: the call alone (``load_file`` / ``NumPack.load`` of every array);
* ``load+read``: the call, then summing every array (every page touched);
* ``load+write 1%``: the call, then writing one element in every hundredth page of every
  array (what a private mapping copies).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

import npkio

PAGE = 4096


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _read(arrays: Dict[str, np.ndarray]) -> None:
    for a in arrays.values():
        a.sum()


def _write(arrays: Dict[str, np.ndarray]) -> None:
    for a in arrays.values():
        flat = a.reshape(-1)
        flat[:: 100 * PAGE // flat.itemsize] += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--tensors", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    per = args.mib * 2**20 // 4 // args.tensors
    rng = np.random.default_rng(0)
    tensors = {f"t{i:04d}": rng.random(per, dtype=np.float32) for i in range(args.tensors)}
    with tempfile.TemporaryDirectory() as tmp:
        st = Path(tmp) / "m.safetensors"
        npkio.save_file(tensors, st)
        npk_path = Path(tmp) / "m.npk"
        npkio.io.from_safetensors_file(st, npk_path)
        st.read_bytes()  # into the page cache
        npk = npkio.NumPack(npk_path)
        names = npk.get_member_list()

        ways: Dict[str, Callable[[], Dict[str, np.ndarray]]] = {
            "load_file() private mapping": lambda: npkio.load_file(st),
            "load_file(copy=False) shared view": lambda: npkio.load_file(st, copy=False),
            "load_file(copy=True)": lambda: npkio.load_file(st, copy=True),
            "NumPack.load() private mapping": lambda: {n: npk.load(n) for n in names},
            "NumPack.load(copy=False) view": lambda: {n: npk.load(n, copy=False) for n in names},
            "NumPack.load(copy=True)": lambda: {n: npk.load(n, copy=True) for n in names},
        }
        try:
            import safetensors.numpy as stn

            ways["safetensors.numpy.load_file"] = lambda: stn.load_file(str(st))
        except ImportError:
            pass
        rows: List[List[str]] = []
        for label, load in ways.items():
            writable = all(a.flags.writeable for a in load().values())
            cells = [label]
            cells.append(f"{_median_ms(load, args.reps):9.2f}")
            cells.append(f"{_median_ms(lambda: _read(load()), args.reps):9.2f}")
            if writable:
                cells.append(f"{_median_ms(lambda: _write(load()), args.reps):9.2f}")
            else:
                cells.append("   (read-only)")
            rows.append(cells)
        npk.close()
    print(f"{args.tensors} float32 tensors, {args.mib} MiB, page cache warm; median ms of "
          f"{args.reps}")
    print(f"{'':36s} {'load':>9s} {'load+read':>9s} {'load+write 1%':>14s}")
    for cells in rows:
        print(f"{cells[0]:36s} {cells[1]} {cells[2]} {cells[3]:>14s}")


if __name__ == "__main__":
    main()
