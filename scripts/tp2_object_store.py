#!/usr/bin/env python3
"""Scale-out, shown: two tensor-parallel ranks, as two separate processes, each loading its
half of one checkpoint from an S3-compatible server, checked against a whole local load.

    python3 scripts/tp2_object_store.py [--size-mib 32] [--world 2] [--dim 0]

It starts s3s-fs on 127.0.0.1 (built by scripts/install-s3s-fs.sh), writes a sharded
SafeTensors checkpoint (two shard files and their index), uploads it, then starts one
process per rank with ``RANK``, ``WORLD_SIZE`` and the server's ``AWS_*`` variables in its
environment, as a launcher such as torchrun would. Each rank calls

    npkio.load_tensors("s3://bucket/ckpt/model.safetensors.index.json",
                       slices=npkio.shard(dim, rank, world))

and saves what it got; this script then compares every rank's part of every tensor with
the same part of a whole load of the local copy, byte for byte, and exits non-zero on any
difference. The npkio it uses is the one ``import npkio`` finds (the installed package, or
the checkout's with ``NPKIO_LIBRARY`` set).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python" / "tests"))

import numpy as np  # noqa: E402

from s3server import S3Server  # noqa: E402

PREFIX = "ckpt"
INDEX = "model.safetensors.index.json"


def rank_main(url: str, out: Path, dim: int) -> None:
    """One rank: its part of every tensor, from the server, saved to ``out``."""
    import npkio

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    t0 = time.perf_counter()
    got = npkio.load_tensors(url, slices=npkio.shard(dim, rank, world))
    secs = time.perf_counter() - t0
    nbytes = sum(a.nbytes for a in got.values())
    np.savez(out, **{k.replace(".", "__"): v for k, v in got.items()})
    print(f"rank {rank}/{world}: {len(got)} tensors, {nbytes / 2**20:.1f} MiB in {secs:.2f} s",
          flush=True)


def make_checkpoint(directory: Path, size: int) -> None:
    """A sharded checkpoint of about ``size`` bytes: two shard files and their index."""
    import npkio

    rng = np.random.default_rng(7)
    cols = 256
    per = max(size // 12, cols * 4)
    rows = per // (cols * 4)
    tensors = {}
    for i in range(6):
        tensors[f"model.layers.{i}.mlp.up_proj.weight"] = rng.standard_normal(
            (rows + i, cols), dtype=np.float32)  # uneven row counts: uneven splits too
        tensors[f"model.layers.{i}.self_attn.q_proj.weight"] = rng.standard_normal(
            (rows, cols)).astype(np.float16)
        tensors[f"model.layers.{i}.input_layernorm.weight"] = rng.standard_normal(
            cols + 1).astype(np.float32)
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for n, part in enumerate((names[:half], names[half:]), start=1):
        fname = f"model-{n:05d}-of-00002.safetensors"
        npkio.save_file({k: tensors[k] for k in part}, directory / fname)
        weight_map.update({k: fname for k in part})
    total = sum(t.nbytes for t in tensors.values())
    (directory / INDEX).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=float, default=32)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--dim", type=int, default=0)
    ap.add_argument("--rank-worker", nargs=2, metavar=("URL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_worker:
        rank_main(args.rank_worker[0], Path(args.rank_worker[1]), args.dim)
        return 0

    import npkio

    with tempfile.TemporaryDirectory(prefix="npkio-tp2-") as tmp:
        tmp = Path(tmp)
        local = tmp / "local"
        local.mkdir()
        make_checkpoint(local, int(args.size_mib * 2**20))
        (tmp / "s3").mkdir()
        server = S3Server(tmp / "s3")
        try:
            server.put_dir(PREFIX, local)
            url = server.url(f"{PREFIX}/{INDEX}")
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env.update(server.env())
            ranks = []
            for rank in range(args.world):
                renv = dict(env, RANK=str(rank), WORLD_SIZE=str(args.world))
                out = tmp / f"rank{rank}.npz"
                cmd = [sys.executable, __file__, "--dim", str(args.dim), "--rank-worker", url,
                       str(out)]
                ranks.append((rank, out, subprocess.Popen(cmd, env=renv)))
            failed = [rank for rank, _, p in ranks if p.wait() != 0]
            if failed:
                print(f"rank(s) {failed} failed", file=sys.stderr)
                return 1
        finally:
            server.stop()

        whole = npkio.load_tensors(local / INDEX)
        bad = []
        for rank, out, _ in ranks:
            with np.load(out) as got:
                got = {k.replace("__", "."): got[k] for k in got.files}
            if sorted(got) != sorted(whole):
                bad.append(f"rank {rank}: tensors {sorted(set(whole) ^ set(got))} differ")
                continue
            for name, full in whole.items():
                want = (np.array_split(full, args.world, axis=args.dim)[rank]
                        if full.ndim > args.dim else full)
                part = got[name]
                if part.shape != want.shape or part.tobytes() != want.tobytes():
                    bad.append(f"rank {rank}: {name} {part.shape} differs from the whole "
                               f"load's part {want.shape}")
        for line in bad:
            print(line, file=sys.stderr)
        if bad:
            return 1
        print(f"{args.world} ranks, {len(whole)} tensors: every part equals the whole load's")
        return 0


if __name__ == "__main__":
    sys.exit(main())
