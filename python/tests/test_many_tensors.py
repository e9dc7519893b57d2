"""Header-only operations on checkpoints with thousands of tensors: documents larger than
the first buffer offered (taken with ``npkio_json_take``, not made twice), the iteration
table, and the one-call list of a NumPack directory's names."""

from __future__ import annotations

import gc
import json
import threading

import numpy as np
import pytest

import npkio
from npkio import _lib

COUNT = 3000  # names of ~50 bytes: every document is well past the first 64 KiB buffer


def names(count: int = COUNT):
    return [
        f"model.layers.{i // 384}.mlp.experts.{i % 384 // 3}.p{i % 3}.weight"
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    d = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(7)
    tensors = {}
    for i, n in enumerate(names()):
        if i % 3 == 0:
            tensors[n] = rng.integers(0, 255, (2, 3), dtype=np.uint8)
        elif i % 3 == 1:
            tensors[n] = rng.standard_normal((4,)).astype(np.float32)
        else:
            tensors[n] = np.zeros((0, 5), dtype=np.float16)
    path = d / "model.safetensors"
    npkio.save_file(tensors, path, metadata={"format": "pt"})
    npk = d / "model.npk"
    npkio.from_safetensors_file(path, npk)
    return path, npk, tensors


def test_metadata_of_a_large_header(many):
    path, _, tensors = many
    meta = npkio.get_safetensors_metadata(path)
    assert len(json.dumps(meta)) > _lib._JSON_CAPACITY
    assert sorted(meta["tensors"]) == sorted(tensors)
    for n, t in tensors.items():
        assert meta["tensors"][n]["shape"] == list(t.shape)
    assert meta["metadata"] == {"format": "pt"}
    # The document was taken, not left waiting: nothing is pending on this thread.
    need = _lib.c_size_t()
    assert _lib.lib.npkio_json_take(None, 0, _lib.ctypes.byref(need)) == 7  # INVALID_ARGUMENT


def test_iteration_yields_every_tensor_as_a_read_only_view(many):
    path, _, tensors = many
    got = list(npkio.iter_safetensors(path))
    # File order: by data offsets (the order among empty tensors at one offset is not fixed).
    offsets = npkio.get_safetensors_metadata(path)["tensors"]
    assert sorted(n for n, _ in got) == sorted(tensors)
    assert [offsets[n]["data_offsets"] for n, _ in got] == sorted(
        t["data_offsets"] for t in offsets.values()
    )
    for n, arr in got:
        want = tensors[n]
        assert arr.dtype == want.dtype and arr.shape == want.shape, n
        assert np.array_equal(arr, want), n
        assert not arr.flags.writeable
    # The views outlive the iterator and its handle's last other reference.
    name, first = got[5]
    del got
    gc.collect()
    assert np.array_equal(first, tensors[name])


def test_iteration_of_selected_keys_and_copies(many):
    path, _, tensors = many
    keys = names()[::-7][:50]
    got = list(npkio.iter_safetensors(path, keys=keys, copy=True))
    assert [n for n, _ in got] == keys
    for n, arr in got:
        assert arr.flags.writeable and arr.flags.owndata
        assert np.array_equal(arr, tensors[n])
    with pytest.raises(KeyError):
        npkio.iter_safetensors(path, keys=keys + ["missing"])
    assert list(npkio.iter_safetensors(path, keys=[])) == []


def test_iterators_interleaved_and_in_threads(many):
    path, _, tensors = many
    a, b = npkio.iter_safetensors(path), npkio.iter_safetensors(path)
    seen_a, seen_b = {}, {}
    for (na, xa), (nb, xb) in zip(a, b):
        seen_a[na], seen_b[nb] = xa, xb
    assert len(seen_a) == len(seen_b) == COUNT
    for n, t in tensors.items():
        assert np.array_equal(seen_a[n], t) and np.array_equal(seen_b[n], t), n
    errors = []

    def work():
        try:
            for _ in range(3):
                assert len(npkio.get_safetensors_metadata(path)["tensors"]) == COUNT
                assert sum(1 for _ in npkio.iter_safetensors(path)) == COUNT
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_one_iterator_shared_by_threads(many):
    path, _, tensors = many
    it = npkio.iter_safetensors(path)
    got, errors = [], []

    def drain():
        try:
            for item in it:
                got.append(item)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(n for n, _ in got) == sorted(tensors)


def test_numpack_names_in_one_call(many):
    _, npk, tensors = many
    with npkio.NumPack(npk) as p:
        listed = p.get_member_list()
        assert listed == sorted(tensors)
        assert len(json.dumps(listed)) > _lib._JSON_CAPACITY
        assert len(p) == COUNT and list(p) == listed
        p.drop(listed[0])  # every row dropped, the name kept (NumPack 0.7)
        assert p.get_member_list() == listed
        assert p.get_shape(listed[0])[0] == 0
        meta = p.get_metadata()
        assert sorted(meta["arrays"]) == listed
