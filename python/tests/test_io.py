"""npkio.io against the safetensors package, the memory API's input handling, sharded
export, errors and keyword extras."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

import npkio
from npkio.io import (
    DEFAULT_CHUNK_SIZE,
    from_safetensors,
    from_safetensors_file,
    get_safetensors_metadata,
    iter_safetensors,
    to_safetensors,
    to_safetensors_file,
)

from conftest import FIXTURES, REPO

TINY_LLAMA = REPO / "examples" / "tiny-llama.safetensors"
NUMPY_FILES = [
    FIXTURES / "safetensors" / "with_metadata.safetensors",
    FIXTURES / "safetensors" / "edge_cases.safetensors",
    FIXTURES / "safetensors" / "sharded" / "model-00001-of-00002.safetensors",
    TINY_LLAMA,
]


def test_default_chunk_size_is_the_library_default():
    assert DEFAULT_CHUNK_SIZE == 8 * 1024 * 1024


def header_bytes(path) -> dict:
    """name -> (dtype, shape, bytes) read straight from the file, for tensors the
    safetensors package cannot give as NumPy arrays (BF16 without ml_dtypes)."""
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    return {
        k: (v["dtype"], v["shape"], raw[8 + n + v["data_offsets"][0] : 8 + n + v["data_offsets"][1]])
        for k, v in header.items()
    }


def assert_same_as_safetensors(got: dict, path) -> None:
    """``got`` equals what the safetensors package loads from ``path``: the arrays
    ``safetensors.numpy`` can make compared as arrays (dtype, shape, values), the others
    (BF16 when ml_dtypes is absent, or npkio's raw form) by dtype name and bytes."""
    raw = header_bytes(path)
    assert set(got) == set(raw)
    with safe_open(path, framework="np") as f:
        for name in f.keys():
            dtype, shape, data = raw[name]
            assert npkio.dtype_of(got[name]) == dtype, name
            assert got[name].tobytes() == data, name
            if got[name].dtype.metadata:  # npkio's raw form: bits compared above
                continue
            try:
                want = f.get_tensor(name)
            except TypeError:  # a dtype NumPy lacks and ml_dtypes is not there
                continue
            assert got[name].dtype == want.dtype, name
            assert got[name].shape == want.shape, name
            np.testing.assert_array_equal(got[name], want, err_msg=name)


@pytest.mark.parametrize("path", NUMPY_FILES, ids=lambda p: p.name)
def test_iter_equals_safetensors_load(path, dtype_mode):
    got = dict(iter_safetensors(path))
    assert list(got) == list(get_safetensors_metadata(path)["tensors"])
    assert_same_as_safetensors(got, path)
    if dtype_mode == "ml_dtypes":  # safetensors.numpy.load_file handles every dtype then
        want = load_file(path)
        for name, arr in want.items():
            assert got[name].dtype == arr.dtype
            np.testing.assert_array_equal(got[name], arr, err_msg=name)


@pytest.mark.parametrize("path", NUMPY_FILES, ids=lambda p: p.name)
def test_conversion_round_trip_is_read_back_by_safetensors(path, tmp_path, dtype_mode):
    from_safetensors_file(path, tmp_path / "m.npk")
    assert_same_as_safetensors(to_safetensors(tmp_path / "m.npk"), path)
    to_safetensors_file(tmp_path / "m.npk", tmp_path / "back.safetensors")
    back = tmp_path / "back.safetensors"
    assert_same_as_safetensors(dict(iter_safetensors(back)), path)
    assert {k: (d, s, b) for k, (d, s, b) in header_bytes(back).items()} == header_bytes(path)
    # the source's __metadata__ travels with the arrays
    with safe_open(path, framework="np") as f:
        src_meta = f.metadata()
    with safe_open(back, framework="np") as f:
        assert f.metadata() == src_meta


def test_metadata_layout_and_offsets_match_the_header():
    path = FIXTURES / "safetensors" / "with_metadata.safetensors"
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = get_safetensors_metadata(path)
    assert set(meta) == {"tensors", "metadata"}
    assert meta["metadata"] == header.pop("__metadata__")
    assert meta["tensors"] == {
        k: {"shape": v["shape"], "dtype": v["dtype"], "data_offsets": v["data_offsets"]}
        for k, v in header.items()
    }
    # no __metadata__ at all: an empty dict
    assert get_safetensors_metadata(FIXTURES / "safetensors" / "edge_cases.safetensors")[
        "metadata"
    ] == {}


def test_from_safetensors_writes_what_numpy_holds(tmp_path):
    base = np.arange(24, dtype=np.int32).reshape(4, 6)
    tensors = {
        "transposed": base.T,  # not C-contiguous: saved in logical C order
        "strided": base[:, ::2],
        "scalar": np.float64(2.5),
        "zero_d": np.array(7, dtype=np.int16),
        "bool": np.array([True, False, True]),
        "c128": np.array([1 + 2j, -3j]),
        "c64": np.array([1 + 1j], dtype=np.complex64),
        "big_endian": np.arange(5, dtype=">f4"),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "list": [[1.0, 2.0], [3.0, 4.0]],
    }
    from_safetensors(tensors, tmp_path / "m.npk")
    got = to_safetensors(tmp_path / "m.npk")
    for name, value in tensors.items():
        want = np.asarray(value)
        assert got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert got["transposed"].flags.c_contiguous
    assert got["big_endian"].dtype == np.dtype("<f4")
    assert got["c128"].dtype == np.complex128
    assert got["scalar"].shape == () and got["scalar"][()] == 2.5
    # the file side: everything but complex128 exports and safetensors reads it back
    del tensors["c128"]
    from_safetensors(tensors, tmp_path / "st.npk")
    to_safetensors_file(tmp_path / "st.npk", tmp_path / "m.safetensors")
    back = load_file(tmp_path / "m.safetensors")
    for name, value in tensors.items():
        np.testing.assert_array_equal(back[name], np.asarray(value), err_msg=name)


def test_from_safetensors_merges_or_drops(tmp_path):
    out = tmp_path / "m.npk"
    from_safetensors({"a": np.ones(2), "b": np.zeros(3)}, out)
    from_safetensors({"a": np.full(2, 5.0)}, out)
    got = to_safetensors(out)
    assert sorted(got) == ["a", "b"] and got["a"][0] == 5.0
    from_safetensors({"c": np.ones(1)}, out, drop_if_exists=True)
    assert list(to_safetensors(out)) == ["c"]


def test_to_safetensors_selects_in_order(tmp_path):
    from_safetensors({"a": np.ones(1), "b": np.ones(2), "c": np.ones(3)}, tmp_path / "m.npk")
    assert list(to_safetensors(tmp_path / "m.npk", ["c", "a"])) == ["c", "a"]
    assert list(to_safetensors(tmp_path / "m.npk", "b")) == ["b"]
    assert to_safetensors(tmp_path / "m.npk", []) == {}


def test_to_safetensors_file_selection_and_metadata(tmp_path):
    from_safetensors({"a": np.ones(1), "b": np.ones(2)}, tmp_path / "m.npk")
    to_safetensors_file(tmp_path / "m.npk", tmp_path / "o.safetensors", ["b"], {"k": "v"})
    with safe_open(tmp_path / "o.safetensors", framework="np") as f:
        assert list(f.keys()) == ["b"]
        assert f.metadata() == {"k": "v"}
    with pytest.raises(TypeError):
        to_safetensors_file(tmp_path / "m.npk", tmp_path / "x.safetensors", metadata={"k": 1})


def test_sharded_export_is_a_save_pretrained_checkpoint(tmp_path):
    rng = np.random.default_rng(2)
    tensors = {f"layer.{i}": rng.random((64, 64), dtype=np.float32) for i in range(5)}
    from_safetensors(tensors, tmp_path / "m.npk")
    out = tmp_path / "ckpt"
    to_safetensors_file(tmp_path / "m.npk", out, max_shard_size="40KB")  # 16 KiB tensors
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 3 and shards[0] == "model-00001-of-00003.safetensors"
    assert index["metadata"]["total_size"] == 5 * 64 * 64 * 4
    for name, arr in tensors.items():
        np.testing.assert_array_equal(load_file(out / index["weight_map"][name])[name], arr)
    # and it reads back as one checkpoint
    assert set(get_safetensors_metadata(out)["tensors"]) == set(tensors)
    back = dict(iter_safetensors(out / "model.safetensors.index.json"))
    for name, arr in tensors.items():
        np.testing.assert_array_equal(back[name], arr)
    from_safetensors_file(out, tmp_path / "again.npk")
    assert set(to_safetensors(tmp_path / "again.npk")) == set(tensors)
    # everything in one shard: a single model.safetensors
    to_safetensors_file(tmp_path / "m.npk", tmp_path / "one", max_shard_size=10**9)
    assert os.listdir(tmp_path / "one") == ["model.safetensors"]


@pytest.mark.parametrize(
    "text,n",
    [("5GB", 5 * 10**9), ("500MiB", 500 * 2**20), ("1.5 kb", 1500), ("123", 123), (7, 7)],
)
def test_max_shard_size_strings(text, n):
    from npkio.io import parse_size

    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["", "5 GBs", "-1", 0, "0B", 1.5, True])
def test_bad_max_shard_sizes(bad, tmp_path):
    with pytest.raises((TypeError, ValueError)):
        to_safetensors_file(tmp_path / "m.npk", tmp_path / "o", max_shard_size=bad)


@pytest.mark.parametrize("big", [2**64, 2**64 + 1, 2**65, 10**30])
def test_integers_past_what_c_takes_are_refused_not_wrapped(big, tmp_path):
    src = FIXTURES / "safetensors" / "with_metadata.safetensors"
    from_safetensors_file(src, tmp_path / "m.npk")
    out = tmp_path / "o.safetensors"
    for kwargs in ({"max_shard_size": big}, {"chunk_size": big}, {"threads": big}):
        with pytest.raises(OverflowError):
            to_safetensors_file(tmp_path / "m.npk", out, **kwargs)
        assert not out.exists(), kwargs
    for kwargs in ({"chunk_size": big}, {"threads": big}):
        with pytest.raises(OverflowError):
            from_safetensors_file(src, tmp_path / "n.npk", **kwargs)
    with pytest.raises(OverflowError):
        from_safetensors({"a": np.zeros(3)}, tmp_path / "p.npk", threads=big)
    assert not (tmp_path / "n.npk").exists() and not (tmp_path / "p.npk").exists()


@pytest.mark.parametrize("text", ["18446744073709551616", "16EiB", "20000000TB", "1.5.2GB"])
def test_size_strings_past_u64_or_malformed_are_value_errors(text):
    from npkio.io import parse_size

    with pytest.raises(ValueError):
        parse_size(text)


def test_the_largest_size_is_taken_exactly():
    from npkio.io import parse_size

    assert parse_size("18446744073709551615") == 2**64 - 1
    assert parse_size(2**64 - 1) == 2**64 - 1


def test_no_clobber_keeps_an_existing_output(tmp_path):
    src = FIXTURES / "safetensors" / "with_metadata.safetensors"
    from_safetensors_file(src, tmp_path / "m.npk")
    out = tmp_path / "o.safetensors"
    to_safetensors_file(tmp_path / "m.npk", out, no_clobber=True)
    out.write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        to_safetensors_file(tmp_path / "m.npk", out, no_clobber=True)
    assert out.read_bytes() == b"mine"
    to_safetensors_file(tmp_path / "m.npk", out)
    assert out.read_bytes() != b"mine"


def test_keyword_extras(tmp_path):
    src = FIXTURES / "safetensors" / "with_metadata.safetensors"
    from_safetensors_file(src, tmp_path / "m.npk", threads=2, durable=True, chunk_size=1)
    to_safetensors_file(tmp_path / "m.npk", tmp_path / "o.safetensors", threads=1, durable=True)
    from_safetensors({"x": np.ones(3)}, tmp_path / "x.npk", threads=1, durable=True)
    assert load_file(tmp_path / "o.safetensors").keys() == load_file(src).keys()
    with pytest.raises(TypeError):
        from_safetensors_file(src, tmp_path / "m.npk", None, False, DEFAULT_CHUNK_SIZE, False, 2)
    with pytest.raises(ValueError):
        from_safetensors_file(src, tmp_path / "m.npk", chunk_size=0)


class HeldLock:
    """Holds the lock that a running conversion into ``output`` holds: its directory's."""

    def __init__(self, output):
        import fcntl

        self.fd = os.open(output.parent, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self):
        os.close(self.fd)


def test_wait_for_lock_false_fails_fast_on_a_busy_output(tmp_path):
    import threading

    src = FIXTURES / "safetensors" / "with_metadata.safetensors"
    from_safetensors_file(src, tmp_path / "m.npk")
    npk, st, ckpt = tmp_path / "busy.npk", tmp_path / "busy.safetensors", tmp_path / "ckpt"
    locks = [HeldLock(npk)]  # the three outputs share their directory, and its lock
    calls = [
        lambda **kw: from_safetensors_file(src, npk, **kw),
        lambda **kw: from_safetensors({"x": np.ones(3)}, npk, **kw),
        lambda **kw: to_safetensors_file(tmp_path / "m.npk", st, **kw),
        lambda **kw: to_safetensors_file(tmp_path / "m.npk", ckpt, max_shard_size=16, **kw),
    ]
    for call in calls:
        with pytest.raises(npkio.NpkioBusyError, match="another conversion") as e:
            call(wait_for_lock=False, durable=True)
        assert isinstance(e.value, BlockingIOError)
    assert not npk.exists() and not st.exists() and not ckpt.exists()
    # The default waits for the lock, then converts.
    errors = []

    def convert():
        try:
            from_safetensors_file(src, npk)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    waiter = threading.Thread(target=convert)
    waiter.start()
    for lock in locks:
        lock.release()
    waiter.join()
    assert errors == []
    to_safetensors_file(npk, st, wait_for_lock=False)
    assert load_file(st).keys() == load_file(src).keys()
    with pytest.raises(TypeError):
        from_safetensors_file(src, npk, None, False, DEFAULT_CHUNK_SIZE, 0, False, False)


# ---------------------------------------------------------------------------------------
# Errors


def test_unknown_keys_raise_key_error(tmp_path):
    src = FIXTURES / "safetensors" / "with_metadata.safetensors"
    with pytest.raises(KeyError) as info:
        iter_safetensors(src, keys=["nope"])  # raised at the call, before iterating
    assert isinstance(info.value, npkio.NpkioKeyError)
    assert "nope" in str(info.value)
    with pytest.raises(npkio.NpkioKeyError):
        from_safetensors_file(src, tmp_path / "m.npk", keys=["encoder.weight", "nope"])
    assert not (tmp_path / "m.npk").exists()
    from_safetensors_file(src, tmp_path / "m.npk")
    with pytest.raises(KeyError):
        to_safetensors(tmp_path / "m.npk", ["nope"])
    with pytest.raises(KeyError):
        to_safetensors_file(tmp_path / "m.npk", tmp_path / "o.safetensors", ["nope"])


def test_missing_inputs_raise_file_not_found(tmp_path):
    for call in (
        lambda: get_safetensors_metadata(tmp_path / "none.safetensors"),
        lambda: iter_safetensors(tmp_path / "none.safetensors"),
        lambda: from_safetensors_file(tmp_path / "none.safetensors", tmp_path / "o.npk"),
        lambda: to_safetensors(tmp_path / "none.npk"),
        lambda: to_safetensors_file(tmp_path / "none.npk", tmp_path / "o.safetensors"),
    ):
        with pytest.raises(FileNotFoundError) as info:
            call()
        assert isinstance(info.value, npkio.NpkioError)
        assert "none." in str(info.value)


def test_an_output_that_is_not_numpack_is_not_touched(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises((FileExistsError, ValueError)) as info:
        from_safetensors({"a": np.ones(1)}, tmp_path / "precious", drop_if_exists=True)
    assert isinstance(info.value, npkio.NpkioError)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_complex128_cannot_go_to_safetensors(tmp_path):
    from_safetensors({"c": np.ones(2, dtype=np.complex128)}, tmp_path / "m.npk")
    with pytest.raises(npkio.NpkioUnsupportedError) as info:
        to_safetensors_file(tmp_path / "m.npk", tmp_path / "o.safetensors")
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "value",
    [
        np.array(["a"]),
        np.array([object()]),
        np.zeros(1, "datetime64[s]"),
        np.zeros(1, dtype=[("a", "i4")]),
    ],
    ids=["str", "object", "datetime", "structured"],
)
def test_unstorable_dtypes_raise_type_error(value, tmp_path):
    with pytest.raises(TypeError):
        from_safetensors({"x": value}, tmp_path / "m.npk")
    assert not (tmp_path / "m.npk").exists()


def test_bad_names_and_paths(tmp_path):
    with pytest.raises(ValueError):
        from_safetensors({"a\0b": np.ones(1)}, tmp_path / "m.npk")
    with pytest.raises(TypeError):
        from_safetensors({1: np.ones(1)}, tmp_path / "m.npk")
    with pytest.raises(ValueError):
        get_safetensors_metadata("")
    with pytest.raises(ValueError):
        get_safetensors_metadata("a\0b")


def test_error_classes_are_both_kinds():
    for cls, base in [
        (npkio.NpkioKeyError, KeyError),
        (npkio.NpkioFileNotFoundError, FileNotFoundError),
        (npkio.NpkioFileExistsError, FileExistsError),
        (npkio.NpkioMalformedError, ValueError),
        (npkio.NpkioValueError, ValueError),
        (npkio.NpkioOSError, OSError),
        (npkio.NpkioBusyError, BlockingIOError),
    ]:
        assert issubclass(cls, npkio.NpkioError) and issubclass(cls, base)


def test_versions_come_from_cargo_toml():
    import importlib.metadata
    import re

    text = (REPO / "Cargo.toml").read_text(encoding="utf-8")
    package = text.split("[package]", 1)[1].split("\n[", 1)[0]
    crate = re.search(r'^version\s*=\s*"([^"]+)"', package, re.MULTILINE).group(1)
    assert npkio.library_version == crate
    assert npkio.__version__ == crate
    try:
        installed = importlib.metadata.version("npkio")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("npkio is not installed: no distribution metadata to compare")
    assert installed == crate


def test_numpack_07_names_and_return_npk_obj(tmp_path):
    from npkio.io import from_tensor_dict, to_tensor_dict

    assert npkio.io.from_safetensors is from_tensor_dict
    assert npkio.io.to_safetensors is to_tensor_dict
    x = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert from_tensor_dict(x, tmp_path / "a.npk") is None
    npk = from_tensor_dict(x, tmp_path / "b.npk", drop_if_exists=True, return_npk_obj=True)
    try:
        assert isinstance(npk, npkio.NumPack)
        np.testing.assert_array_equal(npk.load("w"), x["w"])
    finally:
        npk.close()
    np.testing.assert_array_equal(to_tensor_dict(tmp_path / "a.npk")["w"], x["w"])
    npkio.save_file(x, tmp_path / "x.safetensors")
    npk = from_safetensors_file(tmp_path / "x.safetensors", tmp_path / "c.npk",
                                return_npk_obj=True)
    with npk:
        assert npk.get_member_list() == ["w"]


def test_bf16_and_fp8_are_never_returned_as_integers_without_ml_dtypes(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    raw = np.array([0xBD28, 0x3F80], np.uint16)  # -0.041, 1.0 as bfloat16
    npkio.save_file({"w": raw.view(npkio.raw_dtype("BF16")), "i": np.arange(3)}, path)
    monkeypatch.delenv("NPKIO_NO_ML_DTYPES", raising=False)
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # as if it were not installed
    for read in (lambda: npkio.load_file(path), lambda: npkio.load(path.read_bytes()),
                 lambda: npkio.safe_open(path).get_tensor("w"),
                 lambda: npkio.load_tensors(path, ["w"])):
        with pytest.raises(ImportError, match="BF16.*ml_dtypes"):
            read()
    # Other dtypes still load, and raw bits come back only when asked for.
    assert npkio.load_tensors(path, ["i"])["i"].tolist() == [0, 1, 2]
    monkeypatch.setenv("NPKIO_NO_ML_DTYPES", "1")
    got = npkio.load_file(path)["w"]
    assert npkio.dtype_of(got) == "BF16" and got.view(np.uint16).tolist() == raw.tolist()


def test_npkio_imports_without_torch_and_npkio_torch_names_it(tmp_path):
    import subprocess

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import npkio, numpy as np\n"
        "npkio.save_file({'a': np.arange(3)}, sys.argv[1])\n"
        "assert npkio.load_file(sys.argv[1])['a'].tolist() == [0, 1, 2]\n"
        "for f in (lambda: __import__('npkio.torch'),\n"
        "          lambda: npkio.load_tensors(sys.argv[1], framework='pt')):\n"
        "    try:\n"
        "        f()\n"
        "    except ImportError as e:\n"
        "        assert \"'torch' package is not installed\" in str(e), e\n"
        "    else:\n"
        "        raise AssertionError('no ImportError')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.safetensors")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
