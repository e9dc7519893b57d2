"""The reference fixtures (tests/fixtures/) read through the Python package: files written
by the safetensors serializer, directories written by NumPack 0.7.0, malformed inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

import npkio
from npkio import NumPack
from npkio.io import (
    from_safetensors_file,
    get_safetensors_metadata,
    iter_safetensors,
    to_safetensors,
)

from conftest import FIXTURES, copy_fixture, expected, sha256

ST = expected("safetensors")
NPK = expected("numpack-0.7")
SINGLE_FILES = [f for f in ST if "/" not in f]


@pytest.mark.parametrize("name", SINGLE_FILES)
def test_metadata_matches_the_reference(name):
    meta = get_safetensors_metadata(FIXTURES / "safetensors" / name)
    assert meta["metadata"] == ST[name]["metadata"]
    assert set(meta["tensors"]) == set(ST[name]["tensors"])
    for t, want in ST[name]["tensors"].items():
        got = meta["tensors"][t]
        assert (got["dtype"], got["shape"]) == (want["dtype"], want["shape"]), t
        b, e = got["data_offsets"]
        assert 0 <= b <= e


@pytest.mark.parametrize("name", SINGLE_FILES)
def test_iter_yields_the_reference_bytes(name, dtype_mode):
    seen = {}
    for t, arr in iter_safetensors(FIXTURES / "safetensors" / name):
        want = ST[name]["tensors"][t]
        assert npkio.dtype_of(arr) == want["dtype"], t
        assert sha256(arr) == want["sha256"], t
        seen[t] = arr
    assert set(seen) == set(ST[name]["tensors"])


def test_all_dtypes_shapes_and_types(dtype_mode):
    arrays = dict(iter_safetensors(FIXTURES / "safetensors" / "all_dtypes.safetensors"))
    bf16, f8, f4 = arrays["bf16"], arrays["f8_e4m3"], arrays["f4"]
    assert bf16.shape == (8, 4) and f8.shape == (4, 4)
    # F4 always comes back as packed bytes: [2, 6] four-bit elements are [2, 3] bytes
    assert f4.dtype == np.uint8 and f4.shape == (2, 3)
    assert f4.dtype.metadata == {"npkio_dtype": "F4", "npkio_shape": (2, 6)}
    if dtype_mode == "ml_dtypes":
        import ml_dtypes

        assert bf16.dtype == ml_dtypes.bfloat16
        assert f8.dtype == ml_dtypes.float8_e4m3fn
        assert arrays["f8_e8m0"].dtype == ml_dtypes.float8_e8m0fnu
        # the values are real numbers
        assert np.isfinite(bf16.astype(np.float32)).all()
    else:
        assert bf16.dtype == np.uint16 and bf16.dtype.metadata == {"npkio_dtype": "BF16"}
        assert f8.dtype == np.uint8 and f8.dtype.metadata == {"npkio_dtype": "F8_E4M3"}
    assert arrays["f32"].dtype == np.float32 and arrays["f32"].dtype.metadata is None


def test_all_dtypes_round_trip_through_numpack(tmp_path, dtype_mode):
    """Arrays come back, go in again (memory API) and come out bit-identical."""
    src = FIXTURES / "safetensors" / "all_dtypes.safetensors"
    loaded = dict(iter_safetensors(src))
    npkio.from_safetensors(loaded, tmp_path / "a.npk")
    again = to_safetensors(tmp_path / "a.npk")
    npkio.to_safetensors_file(tmp_path / "a.npk", tmp_path / "a.safetensors")
    meta = get_safetensors_metadata(tmp_path / "a.safetensors")
    for t, want in ST["all_dtypes.safetensors"]["tensors"].items():
        assert sha256(again[t]) == want["sha256"], t
        assert npkio.dtype_of(again[t]) == want["dtype"], t
        assert meta["tensors"][t]["dtype"] == want["dtype"], t
        assert meta["tensors"][t]["shape"] == want["shape"], t


def test_sharded_checkpoint_reads_as_one(tmp_path):
    sharded = FIXTURES / "safetensors" / "sharded"
    index = sharded / "model.safetensors.index.json"
    want = {}
    for f, e in ST.items():
        if f.startswith("sharded/"):
            want.update(e["tensors"])
    for path in (index, sharded):
        meta = get_safetensors_metadata(path)
        assert meta["metadata"] == {"format": "pt"}
        assert {t: (m["dtype"], m["shape"]) for t, m in meta["tensors"].items()} == {
            t: (w["dtype"], w["shape"]) for t, w in want.items()
        }
        got = dict(iter_safetensors(path))
        assert {t: sha256(a) for t, a in got.items()} == {t: w["sha256"] for t, w in want.items()}
    from_safetensors_file(sharded, tmp_path / "m.npk")
    arrays = to_safetensors(tmp_path / "m.npk")
    assert {t: sha256(a) for t, a in arrays.items()} == {t: w["sha256"] for t, w in want.items()}
    only = dict(iter_safetensors(index, keys=["lm_head.weight"]))
    assert list(only) == ["lm_head.weight"]


@pytest.mark.parametrize("name", sorted(NPK))
def test_numpack_0_7_directories_load_as_the_reference(name, tmp_path):
    d = copy_fixture(f"numpack-0.7/{name}", tmp_path)
    with NumPack(d) as npk:
        assert sorted(npk.get_member_list()) == sorted(NPK[name])
        for array, want in NPK[name].items():
            arr = npk.load(array)
            assert arr.dtype == np.dtype(want["dtype"]), array
            assert list(arr.shape) == want["shape"], array
            assert list(npk.get_shape(array)) == want["shape"], array
            assert sha256(arr) == want["sha256"], array
    tensors = to_safetensors(d)
    assert {k: sha256(v) for k, v in tensors.items()} == {
        k: w["sha256"] for k, w in NPK[name].items()
    }


CASES = json.loads((FIXTURES / "malformed" / "cases.json").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_inputs_raise_value_error(case, tmp_path):
    path = copy_fixture(f"malformed/{case}", tmp_path)
    with pytest.raises(ValueError) as info:
        if case.endswith(".safetensors"):
            get_safetensors_metadata(path)
        else:
            to_safetensors(path)
    err = info.value
    assert isinstance(err, npkio.NpkioMalformedError)
    assert err.status_name == "NPKIO_STATUS_MALFORMED"
    assert case in str(err)  # the message names the input
    if case.endswith(".safetensors"):
        with pytest.raises(npkio.NpkioMalformedError):
            iter_safetensors(path)
        with pytest.raises(npkio.NpkioMalformedError):
            from_safetensors_file(path, tmp_path / "out.npk")
        assert not (tmp_path / "out.npk").exists()
    else:
        # A damaged array fails when read; the store may open (its other arrays stay
        # readable).
        with pytest.raises(npkio.NpkioMalformedError):
            with NumPack(path) as npk:
                for name in list(npk):
                    npk.load(name)
