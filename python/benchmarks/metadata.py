"""Time to list a 362-tensor SafeTensors file: names, shapes and dtypes.

    python benchmarks/metadata.py [--tensors 362] [--reps 200]

Compares ``npkio.get_safetensors_metadata`` (one C call, one JSON document) with the
``safetensors`` package's ``safe_open`` listing the same: ``keys()`` and, per key,
``get_slice(k).get_shape()`` and ``get_dtype()``. Prints the median and the 10th/90th
percentiles of each, in milliseconds. The file mimics a 7B-parameter model's layout (32
layers of 11 tensors, embeddings, norms) with tiny shapes: only the header matters.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import npkio


def make_file(path: Path, count: int) -> None:
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    parts = [
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
        "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
        "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
        "self_attn.rotary_emb.inv_freq", "mlp.act.scale",
    ]
    layer = 0
    while len(names) < count:
        for p in parts:
            if len(names) < count:
                names.append(f"model.layers.{layer}.{p}")
        layer += 1
    tensors = {n: np.zeros((4, 8), dtype=np.float16) for n in names}
    npkio.save_file(tensors, path, metadata={"format": "pt"})


def timed(fn, reps: int):
    fn()  # warm: page cache, imports
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return statistics.median(times), times[len(times) // 10], times[(9 * len(times)) // 10]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=362)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        make_file(path, args.tensors)

        def ours():
            m = npkio.get_safetensors_metadata(path)
            return {k: (v["shape"], v["dtype"]) for k, v in m["tensors"].items()}

        rows = [("npkio.get_safetensors_metadata", timed(ours, args.reps))]
        try:
            from safetensors import safe_open
        except ImportError:
            safe_open = None
        if safe_open is not None:

            def theirs():
                with safe_open(str(path), framework="np") as f:
                    out = {}
                    for k in f.keys():
                        s = f.get_slice(k)
                        out[k] = (s.get_shape(), s.get_dtype())
                    return out

            assert {k: (list(s), d) for k, (s, d) in theirs().items()} == ours()
            rows.append(("safetensors safe_open keys+shapes", timed(theirs, args.reps)))
        print(f"{args.tensors} tensors, {args.reps} runs each (milliseconds)")
        print(f"{'':36} {'median':>8} {'p10':>8} {'p90':>8}")
        for name, (med, p10, p90) in rows:
            print(f"{name:36} {med:8.3f} {p10:8.3f} {p90:8.3f}")


if __name__ == "__main__":
    main()
