"""An array never outlives the memory it points into: each keeps the C handle it came from
alive through its ``.base`` chain, and the handle is freed when the last array goes."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref

import numpy as np

from npkio import NumPack
from npkio._lib import Handle
from npkio.io import from_safetensors, iter_safetensors, to_safetensors

from conftest import FIXTURES, sha256


def owner_of(arr: np.ndarray) -> Handle:
    """The Handle an array's .base chain ends in."""
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    assert base is not None, "the array owns its memory"
    return base.owner


def test_numpack_arrays_outlive_close_and_the_object(tmp_path):
    want = np.random.default_rng(0).random((256, 256))
    with NumPack(tmp_path / "m.npk") as npk:
        npk.save({"w": want})
        w = npk.load("w", copy=False)  # the handle's own read-only view
    handle = weakref.ref(owner_of(w))
    del npk
    gc.collect()
    assert handle() is not None  # kept by the array
    np.testing.assert_array_equal(w, want)
    view = w[10:20, ::3]
    del w
    gc.collect()
    assert handle() is not None  # kept by a view of the array
    np.testing.assert_array_equal(view, want[10:20, ::3])
    del view
    gc.collect()
    assert handle() is None  # freed with the last array


def test_to_safetensors_arrays_outlive_the_dict(tmp_path):
    from_safetensors({"a": np.arange(1000), "b": np.ones(10)}, tmp_path / "m.npk")
    a = to_safetensors(tmp_path / "m.npk")["a"]
    gc.collect()
    handle = weakref.ref(owner_of(a))
    assert handle() is not None
    assert a.sum() == 999 * 1000 // 2
    del a
    gc.collect()
    assert handle() is None


def test_iter_arrays_outlive_the_iterator(dtype_mode):
    path = FIXTURES / "safetensors" / "all_dtypes.safetensors"
    it = iter_safetensors(path)
    first_name, first = next(it)
    handle = weakref.ref(owner_of(first))
    del it
    gc.collect()
    assert handle() is not None
    assert first.tobytes() == dict(iter_safetensors(path))[first_name].tobytes()
    del first
    gc.collect()
    assert handle() is None


def test_exhausted_iterator_keeps_yielded_arrays(tmp_path):
    path = FIXTURES / "safetensors" / "with_metadata.safetensors"
    arrays = list(iter_safetensors(path))
    gc.collect()
    assert all(sha256(a) == sha256(b) for (_, a), (_, b) in zip(arrays, iter_safetensors(path)))


def test_arrays_after_every_handle_is_gone_in_a_fresh_process(tmp_path):
    """Load, drop every npkio object, churn memory, then read: no crash, same values."""
    code = textwrap.dedent(
        f"""
        import gc, sys
        sys.path[:0] = {sys.path!r}
        import numpy as np
        from npkio import NumPack
        from npkio.io import from_safetensors, to_safetensors
        want = np.arange(1 << 20, dtype=np.float64)
        from_safetensors({{"w": want}}, {str(tmp_path / "m.npk")!r})
        npk = NumPack({str(tmp_path / "m.npk")!r})
        w = npk.load("w")
        t = to_safetensors({str(tmp_path / "m.npk")!r})["w"]
        npk.save({{"w": np.zeros(3)}})
        npk.close(); del npk; gc.collect()
        junk = [np.ones(1 << 16) for _ in range(200)]
        del junk; gc.collect()
        assert np.array_equal(w, want) and np.array_equal(t, want)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
