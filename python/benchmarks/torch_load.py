"""Loading a BF16 checkpoint into torch tensors that own their memory: npkio against
safetensors, in one process, on the same file.

Compared, each run several times in alternation, median reported:

* ``npkio.load_tensors(path, framework="pt")``: torch tensors from ``torch.empty``;
* ``npkio.load_tensors(path)`` (NumPy arrays, allocated without NumPy's huge-page advice),
  and the same into arrays from a plain ``np.empty`` (``into=``), to show what that advice
  costs;
* ``safetensors.torch.load_file(path, backend="pread")`` (safetensors >= 0.8), and
  ``safetensors.torch.load_file(path)`` followed by ``.clone()`` where it lacks ``pread``;
* ``npkio.load_tensors(path, into=...)`` into views of one fresh ``torch.empty`` arena, as
  a C host loading into one malloc'd buffer through ``npkio_load_run``;
* a raw baseline: two threads ``pread`` the whole file into one fresh ``torch.empty``
  buffer (``os.preadv``), what a C host loading into one arena does at best.

Every output comes from fresh pages (glibc's mmap threshold is fixed at 1 MiB, so that no
run reuses memory another one faulted in). Warm: the file is read once first, so that it
is in the page cache. ``--cold`` drops it
from the cache (``posix_fadvise(DONTNEED)``) before every run instead.

    python benchmarks/torch_load.py                 # 1 GiB, warm
    python benchmarks/torch_load.py --size 64MiB    # quick
    python benchmarks/torch_load.py --cold
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import torch

import npkio
import npkio.torch
import safetensors
import safetensors.torch


def parse_size(s: str) -> int:
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for u, m in units.items():
        if s.endswith(u):
            return int(float(s[: -len(u)]) * m)
    return int(s)


def make_checkpoint(path: str, size: int, tensors: int) -> None:
    """``tensors`` BF16 matrices of 4096 columns, ``size`` bytes in all."""
    rows = max(1, size // tensors // (4096 * 2))
    g = torch.Generator().manual_seed(0)
    d = {f"layers.{i}.weight": torch.randn(rows, 4096, generator=g).bfloat16()
         for i in range(tensors)}
    npkio.torch.save_file(d, path)


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def raw_pread(path: str) -> None:
    n = os.path.getsize(path)
    buf = torch.empty(n, dtype=torch.uint8)
    mv = memoryview(buf.numpy())
    fd = os.open(path, os.O_RDONLY)
    chunk = 16 << 20
    try:
        def work(k: int) -> None:
            for off in range(k * chunk, n, 2 * chunk):
                os.preadv(fd, [mv[off: min(off + chunk, n)]], off)

        ts = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        os.close(fd)


def arena_load(path: str, shapes: dict) -> None:
    """Every tensor into one fresh ``torch.empty`` arena, one ``npkio_load_run``: what a C
    host loading into one malloc'd buffer does."""
    sizes = {k: 2 * int(np.prod(v)) for k, v in shapes.items()}
    arena = torch.empty(sum(sizes.values()), dtype=torch.uint8)
    into, at = {}, 0
    for k, shape in shapes.items():
        into[k] = arena[at: at + sizes[k]].view(torch.bfloat16).view(shape)
        at += sizes[k]
    npkio.load_tensors(path, into=into)


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # Every large buffer from fresh pages, as in a process that loads a model once:
        # without this glibc raises its mmap threshold after the first free and later runs
        # reuse memory already faulted in, which favours whichever case runs after another.
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB", help="checkpoint size (default 1GiB)")
    ap.add_argument("--tensors", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each run")
    ap.add_argument("--dir", default=None, help="where to write the checkpoint")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "model.safetensors")
        make_checkpoint(path, parse_size(args.size), args.tensors)
        size = os.path.getsize(path)
        shapes = {k: tuple(v["shape"]) for k, v in
                  npkio.get_safetensors_metadata(path)["tensors"].items()}

        def st_load() -> None:
            try:
                safetensors.torch.load_file(path, backend="pread")
            except TypeError:  # safetensors < 0.8: no pread backend; copy out of the map
                {k: v.clone() for k, v in safetensors.torch.load_file(path).items()}

        cases = {
            "npkio.load_tensors(framework='pt')": lambda: npkio.load_tensors(path, framework="pt"),
            "npkio.torch.load_file(backend='pread')":
                lambda: npkio.torch.load_file(path, backend="pread"),
            "npkio.load_tensors (NumPy)": lambda: npkio.load_tensors(path),
            "np.empty arrays (huge-page advice) filled by load_tensors(into=)":
                lambda: npkio.load_tensors(path, into={k: np.empty(v, np.uint16)
                                                       for k, v in shapes.items()}),
            f"safetensors {safetensors.__version__} load_file(backend='pread')": st_load,
            "npkio into one fresh arena (as a C host)": lambda: arena_load(path, shapes),
            "raw 2-thread pread into torch.empty": lambda: raw_pread(path),
        }
        times = {k: [] for k in cases}
        warm(path)
        for _ in range(args.reps):
            for name, fn in cases.items():
                if args.cold:
                    drop_cache(path)
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        print(f"{size / 2**20:.0f} MiB BF16 in {args.tensors} tensors, "
              f"{'cold' if args.cold else 'warm'}, {args.reps} runs each, torch "
              f"{torch.__version__}, npkio {npkio.__version__}, {os.cpu_count()} CPUs")
        base = statistics.median(times[next(k for k in cases if k.startswith("safetensors"))])
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"  {name:55s} median {m * 1e3:8.1f} ms  "
                  f"(min {min(ts) * 1e3:7.1f}, max {max(ts) * 1e3:7.1f})  "
                  f"{m / base:5.2f}x safetensors  {size / m / 2**30:5.2f} GiB/s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
