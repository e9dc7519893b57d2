"""npkio.NumPack: the class the seed's pipeline uses."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import npkio
from npkio import NumPack
from npkio.io import to_safetensors

from conftest import FIXTURES, copy_fixture


def test_context_manager_save_load_and_listing(tmp_path):
    path = tmp_path / "m.npk"
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    with NumPack(path) as npk:
        assert npk.get_member_list() == []
        npk.save({"b": a, "a": np.int64(3)})
        assert npk.get_member_list() == ["a", "b"]
        assert npk.get_shape("b") == (3, 4) and npk.get_shape("a") == ()
        assert npk.get_dtype("b") == "F32"
        np.testing.assert_array_equal(npk.load("b"), a)
        np.testing.assert_array_equal(npk["b"], npk.load("b", lazy=True))
        assert "b" in npk and "z" not in npk and len(npk) == 2 and list(npk) == ["a", "b"]
    assert npk.is_closed
    with pytest.raises(ValueError):
        npk.load("b")
    npk.open()
    assert npk.is_opened and npk.get_member_list() == ["a", "b"]
    npk.close()
    npk.close()


def test_loaded_arrays_are_writable_private_mappings(tmp_path):
    with NumPack(tmp_path / "m.npk") as npk:
        npk.save({"x": np.arange(4.0), "r": np.arange(6.0).reshape(3, 2)})
        npk.drop("r", [1])
        x = npk.load("x")
        lazy = npk.load("x", lazy=True)
        assert x.flags.writeable and not x.flags.owndata and isinstance(x.base, np.ndarray)
        x += 1  # NumPack's in-place use: pages copied, the file untouched
        lazy[0] = 9
        np.testing.assert_array_equal(x, [1, 2, 3, 4])
        np.testing.assert_array_equal(lazy, [9, 1, 2, 3])
        np.testing.assert_array_equal(npk.load("x"), np.arange(4.0))  # each call its own
        r = npk.load("r")  # dropped rows: gathered into an array of its own
        r[0, 0] = 7
        np.testing.assert_array_equal(npk.load("r"), [[0, 1], [4, 5]])
        shared = npk.load("x", copy=False)  # the handle's read-only view
        assert not shared.flags.writeable
        with pytest.raises(ValueError):
            shared[0] = 2
        owned = npk.load("x", copy=True)
        assert owned.flags.writeable and owned.flags.owndata
        npk.save({"x": np.zeros(4)})  # replaced: the mapped array keeps its bytes
        np.testing.assert_array_equal(x, [1, 2, 3, 4])
        np.testing.assert_array_equal(lazy, [9, 1, 2, 3])
    np.testing.assert_array_equal(to_safetensors(tmp_path / "m.npk")["x"], np.zeros(4))


def test_drop_if_exists_and_reopening(tmp_path):
    path = tmp_path / "m.npk"
    with NumPack(path) as npk:
        npk.save({"x": np.ones(2)})
    with NumPack(path) as npk:
        assert npk.get_member_list() == ["x"]
    npk = NumPack(path, drop_if_exists=True)
    assert npk.get_member_list() == []
    npk.save({"y": np.ones(1)})
    npk.close()
    with npk:  # reopening never drops again
        assert npk.get_member_list() == ["y"]


def test_save_replaces_and_earlier_views_keep_their_bytes(tmp_path):
    with NumPack(tmp_path / "m.npk") as npk:
        npk.save({"w": np.arange(1000, dtype=np.float64)})
        old = npk.load("w")
        npk.save({"w": np.zeros(10, dtype=np.float32)})
        assert npk.get_shape("w") == (10,)
        np.testing.assert_array_equal(old, np.arange(1000))
        npk.drop("w")  # NumPack 0.7: every row dropped, the name stays
        assert npk.get_member_list() == ["w"]
        assert npk.get_shape("w") == (0,)
        np.testing.assert_array_equal(old, np.arange(1000))
        npk.reset()
        assert npk.get_member_list() == []
        np.testing.assert_array_equal(old, np.arange(1000))


def test_append_and_drop_rows(tmp_path):
    with NumPack(tmp_path / "m.npk") as npk:
        npk.save({"x": np.arange(6, dtype=np.int32).reshape(3, 2)})
        npk.append({"x": np.array([[6, 7], [8, 9]], dtype=np.int32)})
        npk.append({"x": np.array([10, 11], dtype=np.int32)})  # one row
        assert npk.get_shape("x") == (6, 2)
        np.testing.assert_array_equal(npk.load("x"), np.arange(12).reshape(6, 2))
        npk.drop("x", [0, -1])
        np.testing.assert_array_equal(npk.load("x"), np.arange(2, 10).reshape(4, 2))
        npk.drop("x", slice(0, 2))
        np.testing.assert_array_equal(npk.load("x"), np.arange(6, 10).reshape(2, 2))
        with pytest.raises(TypeError):
            npk.append({"x": np.zeros((1, 2), dtype=np.float64)})
        with pytest.raises(ValueError):
            npk.append({"x": np.zeros((1, 3), dtype=np.int32)})
        with pytest.raises(KeyError):
            npk.append({"nope": np.zeros(1)})
        npk.drop("x", [5, -7])  # rows out of range are skipped, as in NumPack 0.7
        assert npk.get_shape("x") == (2, 2)
        npk.drop("x", [1, 5])
        np.testing.assert_array_equal(npk.load("x"), np.arange(6, 8).reshape(1, 2))
    # NumPack 0.7 semantics on disk: the export sees only active rows
    np.testing.assert_array_equal(
        to_safetensors(tmp_path / "m.npk")["x"], np.arange(6, 8).reshape(1, 2)
    )


def test_drop_several_arrays(tmp_path):
    with NumPack(tmp_path / "m.npk") as npk:
        npk.save({"a": np.ones(1), "b": np.ones(1), "c": np.ones(1)})
        npk.save({"m": np.arange(6).reshape(2, 3), "s": np.float32(2)})
        npk.drop(["a", "c", "m", "s"])
        # NumPack 0.7: the names stay, with no rows; a 0-d array has none and goes
        assert npk.get_member_list() == ["a", "b", "c", "m"]
        assert [npk.get_shape(n) for n in "abcm"] == [(0,), (1,), (0,), (0, 3)]
        assert npk.load("m").shape == (0, 3)
        npk.drop(["a", "nope"])  # names that are not there are skipped, as in NumPack
        npk.save({"a": np.arange(3.0)})  # a dropped name is filled again by save
        np.testing.assert_array_equal(npk.load("a"), np.arange(3.0))
        npk.reset()
        assert npk.get_member_list() == []


def test_unknown_names_raise_key_error(tmp_path):
    with NumPack(tmp_path / "m.npk") as npk:
        for call in (lambda: npk.load("nope"), lambda: npk.get_shape("nope")):
            with pytest.raises(KeyError) as info:
                call()
            assert isinstance(info.value, npkio.NpkioKeyError)
            assert "nope" in str(info.value)


def test_a_path_that_is_not_numpack_is_refused_and_kept(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(npkio.NpkioError):
        NumPack(tmp_path / "file", drop_if_exists=True)
    assert (tmp_path / "file").read_text() == "x"


def test_numpack_written_dirs_and_reference_dirs(tmp_path):
    d = copy_fixture("numpack-0.7/dropped.npk", tmp_path)
    with NumPack(d) as npk:
        before = {n: npk.load(n).copy() for n in npk.get_member_list()}
        npk.save({"new": np.arange(3)})
    with NumPack(d) as npk:
        for n, arr in before.items():
            np.testing.assert_array_equal(npk.load(n), arr)


def test_durable_mode(tmp_path):
    with NumPack(tmp_path / "m.npk", durable=True) as npk:
        npk.save({"x": np.ones(3)})
        npk.append({"x": np.ones(1)})
        assert npk.get_shape("x") == (4,)


def test_bf16_and_fp8_in_both_modes(tmp_path, dtype_mode):
    src = FIXTURES / "safetensors" / "all_dtypes.safetensors"
    from npkio.io import from_safetensors_file

    from_safetensors_file(src, tmp_path / "m.npk", keys=["bf16", "f8_e5m2", "f4"])
    with NumPack(tmp_path / "m.npk") as npk:
        bf16 = npk.load("bf16")
        assert npkio.dtype_of(bf16) == "BF16" and npk.get_dtype("bf16") == "BF16"
        npk.save({"bf16_copy": bf16, "f4_copy": npk.load("f4")})
        assert npk.get_dtype("bf16_copy") == "BF16"
        assert npk.get_dtype("f4_copy") == "F4" and npk.get_shape("f4_copy") == (2, 6)
        assert npk.load("bf16_copy").tobytes() == bf16.tobytes()
        if dtype_mode == "raw":
            # raw bits can be tagged by hand
            bits = np.frombuffer(bf16.tobytes(), dtype=np.uint16).reshape(bf16.shape)
            npk.save({"tagged": bits.view(npkio.raw_dtype("BF16"))})
            assert npk.get_dtype("tagged") == "BF16"
            npk.save({"untagged": bits})
            assert npk.get_dtype("untagged") == "U16"


def test_threads_share_one_numpack(tmp_path):
    errors = []
    with NumPack(tmp_path / "m.npk") as npk:
        def work(i):
            try:
                for j in range(20):
                    npk.save({f"t{i}": np.full(100, j)})
                    assert npk.load(f"t{i}")[0] == j
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert npk.get_member_list() == ["t0", "t1", "t2", "t3"]


def test_a_handle_reads_arrays_another_handle_left_as_they_were(tmp_path):
    path = tmp_path / "m.npk"
    x = np.arange(100, dtype=np.float32)
    with NumPack(path) as npk:
        npk.save({"x": x, "y": np.ones(100, dtype=np.int32), "z": np.ones(8, dtype=np.float32)})
        npk.save({"v": np.ones(3, dtype=np.int64)})
    reader = NumPack(path)
    v = reader.load("v")
    with NumPack(path) as other:
        other.save({"y": np.zeros(100, dtype=np.float32)})  # another dtype
        other.save({"z": np.full(8, 2, dtype=np.float32)})  # the same dtype and shape
        other.save({"v": np.zeros(5, dtype=np.float64)})
    # v was loaded before: its bytes and description stay.
    np.testing.assert_array_equal(v, np.ones(3, dtype=np.int64))
    assert reader.get_shape("v") == (3,)
    # x is as the reader opened it; z keeps the dtype and shape the reader describes: its
    # new values, whole.
    np.testing.assert_array_equal(reader.load("x"), x)
    np.testing.assert_array_equal(reader.load("z"), np.full(8, 2, dtype=np.float32))
    # y is no longer the int32 array the reader describes.
    with pytest.raises(npkio.NpkioBusyError, match="reopen"):
        reader.load("y")
    with pytest.raises(npkio.NpkioBusyError):
        reader.get_shape("y")
    assert reader.get_shape("x") == (100,)
    # A change through the reader would overwrite one it did not see.
    with pytest.raises(npkio.NpkioBusyError):
        reader.save({"w": x})
    reader.close()
    with NumPack(path) as again:
        np.testing.assert_array_equal(again.load("y"), np.zeros(100, dtype=np.float32))
