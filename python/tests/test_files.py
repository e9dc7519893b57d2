"""npkio.save_file / load_file / save / load against safetensors.numpy: byte-identical
output on seeded random dicts of every dtype safetensors can save, equal arrays on load."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import npkio

sn = pytest.importorskip("safetensors.numpy")
ml_dtypes = pytest.importorskip("ml_dtypes")

CANDIDATES = [
    "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "float32", "float64", "complex64", "complex128", "bfloat16",
    "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "float8_e4m3fnuz", "float8_e5m2fnuz",
]


def _dtype(name: str) -> np.dtype:
    return np.dtype(getattr(ml_dtypes, name, None) or name)


def _st_can_save(dt: np.dtype) -> bool:
    try:
        sn.save({"x": np.zeros(2, dtype=dt)})
    except Exception:  # noqa: BLE001 - safetensors raises several kinds
        return False
    return True


SAVABLE = [n for n in CANDIDATES if _st_can_save(_dtype(n))]
# What safetensors.numpy.load can read back (it lacks BF16 and FP8 on the way out).
LOADABLE = [n for n in SAVABLE if n in {
    "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "float32", "float64", "complex64"}]


def test_safetensors_saves_what_we_expect():
    # Guards the comparison below against silently shrinking.
    for n in ["bool", "uint8", "float32", "float64", "bfloat16", "float8_e4m3fn", "float8_e5m2"]:
        assert n in SAVABLE


def _random_array(rng: np.random.Generator, dt: np.dtype) -> np.ndarray:
    ndim = int(rng.integers(0, 4))
    shape = tuple(int(d) for d in rng.integers(0, 5, size=ndim))
    if rng.random() < 0.1 and ndim:
        shape = (0,) + shape[1:]
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * dt.itemsize, dtype=np.uint8)
    if dt.kind == "b":
        return (raw.reshape(shape) & 1).astype(bool) if shape else np.array(bool(raw.size and raw[0] & 1))
    return raw.view(dt).reshape(shape)


def _random_dict(rng: np.random.Generator, names) -> dict:
    out = {}
    for i in range(int(rng.integers(1, 12))):
        dt = _dtype(names[int(rng.integers(0, len(names)))])
        key = f"t{int(rng.integers(0, 1000))}.{['w', 'b', 'emb', 'x'][i % 4]}"
        out[key] = _random_array(rng, dt)
    return out


def _header(data: bytes):
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


@pytest.mark.parametrize("seed", range(40))
def test_save_is_byte_identical_to_safetensors(seed, tmp_path):
    rng = np.random.default_rng(seed)
    tensors = _random_dict(rng, SAVABLE)
    metadata = [None, {}, {"format": "np"}][seed % 3]
    ours = npkio.save(tensors, metadata)
    theirs = sn.save(tensors, metadata)
    assert ours == theirs
    npkio.save_file(tensors, tmp_path / "a.safetensors", metadata)
    sn.save_file(tensors, tmp_path / "b.safetensors", metadata)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert (tmp_path / "a.safetensors").read_bytes() == ours


def test_every_savable_dtype_in_one_file_is_byte_identical(tmp_path):
    rng = np.random.default_rng(1234)
    tensors = {f"x_{n}": _random_array(rng, _dtype(n)) for n in SAVABLE}
    tensors.update({f"y_{n}": np.zeros((3, 2), dtype=_dtype(n)) for n in SAVABLE})
    assert npkio.save(tensors) == sn.save(tensors)
    npkio.save_file(tensors, tmp_path / "a.safetensors")
    sn.save_file(tensors, tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_several_metadata_entries_are_written_in_dict_order():
    tensors = {"w": np.arange(4, dtype=np.float32)}
    metadata = {"z": "1", "a": "2", "m": "3"}
    ours, theirs = npkio.save(tensors, metadata), sn.save(tensors, metadata)
    (h1, d1), (h2, d2) = _header(ours), _header(theirs)
    # safetensors orders __metadata__ by a Rust HashMap; npkio keeps the dict's order.
    assert h1 == h2 and d1 == d2 and len(ours) == len(theirs)
    assert list(h1["__metadata__"]) == ["z", "a", "m"]


def test_non_contiguous_and_big_endian_inputs_are_saved_as_their_values(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    tensors = {"t": base.T, "be": base.astype(">f4"), "s": base[::2, 1::2]}
    plain = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    assert npkio.save(tensors) == sn.save(plain)


@pytest.mark.parametrize("seed", range(20))
def test_load_file_and_load_equal_safetensors(seed, tmp_path):
    rng = np.random.default_rng(1000 + seed)
    tensors = _random_dict(rng, LOADABLE)
    path = tmp_path / "m.safetensors"
    sn.save_file(tensors, path)
    theirs = sn.load_file(path)
    for ours in (npkio.load_file(path), npkio.load(path.read_bytes())):
        assert sorted(ours) == sorted(theirs)
        if all(v.nbytes for v in tensors.values()):
            # File order (safetensors orders empty tensors, which share an offset, by hash).
            assert list(ours) == list(theirs)
        for k in theirs:
            assert ours[k].dtype == theirs[k].dtype and ours[k].shape == theirs[k].shape
            np.testing.assert_array_equal(ours[k], theirs[k])


def test_bf16_and_fp8_round_trip_through_ml_dtypes(tmp_path, dtype_mode):
    rng = np.random.default_rng(7)
    tensors = {n: _random_array(rng, _dtype(n)) for n in SAVABLE if n not in LOADABLE}
    path = tmp_path / "m.safetensors"
    npkio.save_file(tensors, path)
    for loaded in (npkio.load_file(path), npkio.load(path.read_bytes())):
        assert sorted(loaded) == sorted(tensors)
        for k, v in tensors.items():
            got = loaded[k]
            assert npkio.dtype_of(got) == npkio.dtype_of(v)
            assert got.tobytes() == v.tobytes()
            if dtype_mode == "ml_dtypes":
                assert got.dtype == v.dtype and got.shape == v.shape


def test_arrays_are_writable_and_independent_and_copy_picks_the_kind(tmp_path):
    path = tmp_path / "m.safetensors"
    w = np.arange(6, dtype=np.int32).reshape(2, 3)
    npkio.save_file({"w": w, "e": np.zeros((0, 3), np.float32)}, path)
    data = path.read_bytes()
    # Writable as safetensors returns them: load_file maps the file privately (zero-copy,
    # copy-on-write), load copies; each call's arrays are its own.
    mapped, again = npkio.load_file(path), npkio.load_file(path)
    assert not mapped["w"].flags.owndata and mapped["e"].flags.writeable
    with npkio.safe_open(path) as f:
        got = f.get_tensor("w")
    for arr in (mapped["w"], npkio.load(data)["w"], got):
        assert arr.flags.writeable
        arr += 1
        np.testing.assert_array_equal(arr, w + 1)
    np.testing.assert_array_equal(again["w"], w)
    assert path.read_bytes() == data
    for view in (npkio.load_file(path, copy=False)["w"], npkio.load(data, copy=False)["w"]):
        assert not view.flags.writeable
        with pytest.raises(ValueError):
            view[0, 0] = 1
    for owned in (
        npkio.load_file(path, copy=True)["w"],
        npkio.load_file(path, backend="pread")["w"],
        npkio.load(data, copy=True)["w"],
    ):
        assert owned.flags.writeable and owned.flags.owndata
        owned[0, 0] = 42
    np.testing.assert_array_equal(npkio.load_file(path)["w"], np.arange(6).reshape(2, 3))
    assert path.read_bytes() == data
    with pytest.raises(ValueError):
        npkio.load_file(path, backend="mmapx")


def test_save_file_replaces_and_leaves_no_partial_file_on_error(tmp_path):
    path = tmp_path / "m.safetensors"
    npkio.save_file({"a": np.zeros(3, np.float32)}, path)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        npkio.save_file({"a": np.zeros(3, np.complex128)}, path)
    with pytest.raises(TypeError):
        npkio.save_file({"a": np.zeros(3, np.float32)}, path, metadata={"k": 1})
    assert path.read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if "npkio-tmp" in p.name]
    npkio.save_file({"b": np.ones(2, np.int8)}, path)
    assert list(npkio.load_file(path)) == ["b"]


def test_load_rejects_malformed_bytes():
    good = npkio.save({"a": np.arange(4, dtype=np.float32)})
    for bad in (b"", good[:7], good[:-1], good + b"\0", b"\xff" * 8 + good[8:]):
        with pytest.raises(ValueError):
            npkio.load(bad)


def test_signatures_match_safetensors_numpy():
    import inspect

    for name in ("save_file", "save", "load", "load_file"):
        ours = inspect.signature(getattr(npkio, name)).parameters
        theirs = inspect.signature(getattr(sn, name)).parameters
        for p in theirs.values():
            assert p.name in ours, (name, p.name)
            assert ours[p.name].default == p.default, (name, p.name)
            assert ours[p.name].kind == p.kind, (name, p.name)


def test_serialize_takes_tensor_specs_as_safetensors_does(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(6, dtype=ml_dtypes.bfloat16)
    specs = {
        "a": npkio.TensorSpec(dtype="float32", shape=a.shape, data_ptr=a.ctypes.data,
                              data_len=a.nbytes),
        "b": npkio.TensorSpec(dtype="bfloat16", shape=[6], data_ptr=b.ctypes.data,
                              data_len=b.nbytes),
    }
    st = pytest.importorskip("safetensors")
    theirs = {k: st.TensorSpec(dtype=v.dtype, shape=v.shape, data_ptr=v.data_ptr,
                               data_len=v.data_len) for k, v in specs.items()}
    meta = {"format": "np"}
    assert npkio.serialize(specs, meta) == st.serialize(theirs, meta)
    npkio.serialize_file(specs, tmp_path / "x.safetensors", metadata=meta)
    assert (tmp_path / "x.safetensors").read_bytes() == st.serialize(theirs, meta)
    with pytest.raises(npkio.SafetensorError):
        npkio.TensorSpec(dtype="nonsense", shape=[1], data_ptr=0, data_len=0)
    with pytest.raises(npkio.SafetensorError, match="needs 48 bytes"):
        npkio.serialize({"a": npkio.TensorSpec("float32", [3, 4], a.ctypes.data, 40)})
    with pytest.raises(TypeError):
        npkio.serialize({"a": {"dtype": "float32", "shape": [1], "data_ptr": 0, "data_len": 0}})
    # Every npkio error is a SafetensorError, as code written for safetensors catches them.
    assert issubclass(npkio.NpkioKeyError, npkio.SafetensorError)
