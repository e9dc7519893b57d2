"""The NumPack class against NumPack 0.7.0's documented behaviour: getitem, replace,
clone, update, reset, stream_load, lazy loads, get_metadata, get_modify_time and the
constructor's options; on new directories and on the directories NumPack 0.7.0 wrote."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

import npkio
from conftest import copy_fixture, expected, sha256
from npkio import NumPack, NumPackStateError

REF = expected("numpack-0.7")


@pytest.fixture
def npk(tmp_path):
    with NumPack(tmp_path / "p.npk", warn_no_context=False) as n:
        n.save({"a": np.arange(20, dtype=np.int64).reshape(10, 2), "s": np.arange(5.0)})
        yield n


def test_getitem_rows_by_index_slice_and_array(npk):
    a = np.arange(20, dtype=np.int64).reshape(10, 2)
    np.testing.assert_array_equal(npk.getitem("a", [0, 3, -1]), a[[0, 3, -1]])
    np.testing.assert_array_equal(npk.getitem("a", np.array([9, 0])), a[[9, 0]])
    assert npk.getitem("a", 4).shape == (1, 2)  # an int keeps the row axis, as NumPack
    np.testing.assert_array_equal(npk.getitem("a", 4), a[[4]])
    view = npk.getitem("a", slice(2, 6))
    np.testing.assert_array_equal(view, a[2:6])
    assert view.flags.writeable and not view.flags.owndata  # zero-copy, private mapping
    np.testing.assert_array_equal(npk.getitem("a", slice(-3, None)), a[-3:])
    assert npk.getitem("a", []).shape == (0, 2)
    assert npk.getitem("a", slice(2, 6), copy=True).flags.writeable
    with pytest.raises(IndexError):
        npk.getitem("a", [10])
    with pytest.raises(TypeError):
        npk.getitem("a", np.ones(10, dtype=bool))
    with pytest.raises(KeyError):
        npk.getitem("nope", [0])


def test_getitem_follows_dropped_rows(npk):
    npk.drop("a", [0, 1])
    np.testing.assert_array_equal(npk.getitem("a", [0]), [[4, 5]])


def test_replace_rows(npk):
    npk.replace({"a": np.array([[-1, -2], [-3, -4]])}, [1, -1])
    got = npk.load("a")
    assert got[1].tolist() == [-1, -2] and got[9].tolist() == [-3, -4]
    assert got[0].tolist() == [0, 1] and got.shape == (10, 2)
    npk.replace({"a": np.array([7, 7])}, slice(0, 3))  # one row broadcast to each
    assert npk.load("a")[:3].tolist() == [[7, 7]] * 3
    npk.replace({"s": np.array([9.0])}, 0)
    assert npk.load("s")[0] == 9.0
    with pytest.raises(TypeError):
        npk.replace({"a": np.zeros((1, 2), np.float32)}, [0])
    with pytest.raises(ValueError):
        npk.replace({"a": np.zeros((2, 3), np.int64)}, [0, 1])
    with pytest.raises(IndexError):
        npk.replace({"a": np.zeros((1, 2), np.int64)}, [10])
    with pytest.raises(KeyError):
        npk.replace({"nope": np.zeros((1, 2), np.int64)}, [0])


def test_replace_after_drop_addresses_remaining_rows(npk):
    npk.drop("a", [0])
    npk.replace({"a": np.array([[50, 51]])}, [0])
    got = npk.load("a")
    assert got.shape == (9, 2) and got[0].tolist() == [50, 51] and got[1].tolist() == [4, 5]


def test_clone_is_independent(npk):
    npk.clone("a", "b")
    np.testing.assert_array_equal(npk.load("b"), npk.load("a"))
    npk.replace({"b": np.array([[0, 0]])}, [0])
    assert npk.load("a")[0].tolist() == [0, 1]
    with pytest.raises(ValueError):
        npk.clone("a", "b")
    with pytest.raises(KeyError):
        npk.clone("nope", "c")


def test_update_compacts_dropped_rows(npk, tmp_path):
    npk.drop("a", [0, 5])
    before = npk.load("a", copy=True)
    assert npk.get_metadata()["arrays"]["a"]["shape"] == [10, 2]
    npk.update("a")
    np.testing.assert_array_equal(npk.load("a"), before)
    meta = npk.get_metadata()["arrays"]["a"]
    assert meta["shape"] == [8, 2] and meta["size_bytes"] == 8 * 2 * 8
    assert not list((tmp_path / "p.npk").glob("deleted_a*"))
    npk.update("s")  # nothing to compact: no-op
    with pytest.raises(KeyError):
        npk.update("nope")


def test_update_on_numpack_written_directories(tmp_path, dtype_mode):
    for fixture in ("dropped.npk", "segmented.npk"):
        path = copy_fixture(f"numpack-0.7/{fixture}", tmp_path)
        with NumPack(path, warn_no_context=False) as n:
            for name in n.get_member_list():
                n.update(name)
        with NumPack(path, warn_no_context=False) as n:
            for name, ref in REF[fixture].items():
                arr = n.load(name)
                assert list(arr.shape) == ref["shape"] and sha256(arr) == ref["sha256"]
                assert n.get_metadata()["arrays"][name]["shape"] == ref["shape"]


def test_reset(npk):
    npk.reset()
    assert npk.get_member_list() == []
    npk.save({"x": np.zeros(2)})
    assert npk.get_member_list() == ["x"]


def test_stream_load_batches(npk):
    batches = list(npk.stream_load("a", 4))
    assert [b.shape for b in batches] == [(4, 2), (4, 2), (2, 2)]
    np.testing.assert_array_equal(np.concatenate(batches), npk.load("a"))
    assert all(b.flags.writeable and not b.flags.owndata for b in batches)
    assert [b.shape for b in npk.stream_load("s")] == [(1,)] * 5  # None: one row a batch
    assert all(b.flags.writeable for b in npk.stream_load("a", 3, copy=True))
    with pytest.raises(ValueError):
        npk.stream_load("a", 0)
    with pytest.raises(KeyError):
        npk.stream_load("nope", 2)


def test_lazy_load_is_the_mapping(npk):
    lazy = npk.load("a", lazy=True)
    assert lazy.shape == (10, 2) and not lazy.flags.owndata
    np.testing.assert_array_equal(lazy[3:5], npk.load("a")[3:5])
    owned = npk.load("a", copy=True)
    owned[0, 0] = 99
    assert npk.load("a")[0, 0] == 0


def test_get_metadata_and_modify_time(npk, tmp_path):
    meta = npk.get_metadata()
    assert meta["total_arrays"] == 2 and set(meta["arrays"]) == {"a", "s"}
    assert meta["base_dir"] == str(tmp_path / "p.npk")
    a = meta["arrays"]["a"]
    assert a["dtype"] == "Int64" and a["shape"] == [10, 2] and a["size_bytes"] == 160
    assert a["data_file"] == "data_a.npkd"
    assert meta["arrays"]["s"]["dtype"] == "Float64"
    t0 = npk.get_modify_time("a")
    now_us = time.time() * 1e6
    assert abs(now_us - t0) < 600e6  # microseconds since the epoch
    time.sleep(0.002)
    npk.save({"a": np.zeros((1, 2), np.int64)})
    assert npk.get_modify_time("a") > t0
    assert npk.get_modify_time("nope") is None


def test_get_metadata_of_a_numpack_written_directory(tmp_path):
    path = copy_fixture("numpack-0.7/basic.npk", tmp_path)
    with NumPack(path, warn_no_context=False) as n:
        meta = n.get_metadata()
    assert meta["total_arrays"] == len(REF["basic.npk"])
    names = {"bool": "Bool", "float32": "Float32", "complex128": "Complex128", "int8": "Int8"}
    for name, ref in REF["basic.npk"].items():
        m = meta["arrays"][name]
        assert m["shape"] == ref["shape"]
        if ref["dtype"] in names:
            assert m["dtype"] == names[ref["dtype"]]
        assert m["last_modified"] > 1_600_000_000 * 10**6


def test_constructor_options(tmp_path):
    path = tmp_path / "c.npk"
    with pytest.warns(UserWarning):
        NumPack(path, warn_no_context=True).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NumPack(path, warn_no_context=False).close()
        NumPack(path, strict_context_mode=True, warn_no_context=True).close()
    strict = NumPack(path, strict_context_mode=True)
    with pytest.raises(RuntimeError):
        strict.save({"x": np.zeros(1)})
    with strict as n:
        n.save({"x": np.zeros(1)})
        assert n.get_member_list() == ["x"]
    with pytest.raises(RuntimeError):
        strict.load("x")
    gc_npk = NumPack(path, force_gc_on_close=True, warn_no_context=False)
    gc_npk.close()
    gc_npk.close(force_gc=True)
    closed = NumPack(path, warn_no_context=False)
    closed.close()
    with pytest.raises(NumPackStateError):
        closed.load("x")
    with pytest.raises(ValueError):  # what npkio raised before, still true
        closed.load("x")


def test_copy_everywhere_an_array_is_returned(tmp_path):
    path = tmp_path / "m.npk"
    npkio.from_safetensors({"w": np.arange(6, dtype=np.float32)}, path)
    st = tmp_path / "m.safetensors"
    npkio.to_safetensors_file(path, st)
    got = [
        npkio.to_safetensors(path, copy=True)["w"],
        next(iter(npkio.iter_safetensors(st, copy=True)))[1],
        npkio.load_file(st, copy=True)["w"],
        npkio.load(st.read_bytes(), copy=True)["w"],
    ]
    with NumPack(path, warn_no_context=False) as n:
        got += [n.load("w", copy=True), n.getitem("w", slice(0, 3), copy=True)]
        got += list(n.stream_load("w", 6, copy=True))
    for arr in got:
        assert arr.flags.writeable and arr.flags.owndata
        arr[0] = 42
    assert npkio.load_file(st)["w"][0] == 0
