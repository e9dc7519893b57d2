"""Checkpoints in object storage: the Python surfaces given ``s3://`` URLs, against a real
S3-compatible server (s3s-fs on 127.0.0.1, see s3server.py), compared with the same
checkpoints read locally. Without the server's binary these tests fail, naming the script
that installs it."""

from __future__ import annotations

import os

import numpy as np
import pytest

import npkio
from conftest import FIXTURES, REPO
from s3server import SECRET_KEY, S3Server

ST = FIXTURES / "safetensors"
NPK = FIXTURES / "numpack-0.7"
NUMPACKS = ["basic.npk", "dropped.npk", "segmented.npk", "appended.npk"]
FILES = ["all_dtypes.safetensors", "edge_cases.safetensors", "with_metadata.safetensors"]
TINY = REPO / "examples" / "tiny-llama.safetensors"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The server, with the fixtures uploaded, and its client environment set."""
    server = S3Server(tmp_path_factory.mktemp("s3"))
    saved = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    try:
        for name in FILES:
            server.put_file(f"st/{name}", ST / name)
        server.put_file("tiny/model.safetensors", TINY)
        server.put_dir("sharded", ST / "sharded")
        for name in NUMPACKS:
            server.put_dir(f"npk/{name}", NPK / name)
        for k in saved:
            del os.environ[k]
        os.environ.update(server.env())
        yield server
    finally:
        for k in server.env():
            os.environ.pop(k, None)
        os.environ.update(saved)
        server.stop()


def same(a, b):
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def same_dicts(got, ref):
    assert list(got) == list(ref)
    for name in ref:
        same(got[name], ref[name])


REMOTE = [(f"st/{n}", ST / n) for n in FILES] + [
    ("tiny/model.safetensors", TINY),
    ("tiny", TINY),  # a prefix holding model.safetensors
    ("sharded/model.safetensors.index.json", ST / "sharded" / "model.safetensors.index.json"),
    ("sharded", ST / "sharded"),  # a prefix holding the index
]
IDS = [k for k, _ in REMOTE]
STORES = [(f"npk/{n}", NPK / n) for n in NUMPACKS]  # NumPack directories: prefixes
STORE_IDS = [k for k, _ in STORES]


def test_urls_are_not_local_paths():
    assert npkio._lib.is_url("s3://b/k") and npkio._lib.is_url("HTTPS://h/x")
    assert not npkio._lib.is_url("s3:/b/k") and not npkio._lib.is_url("./s3://b")


@pytest.mark.parametrize("key,local", REMOTE, ids=IDS)
def test_load_tensors_equals_the_local_load(s3, key, local):
    same_dicts(npkio.load_tensors(s3.url(key)), npkio.load_tensors(local))


@pytest.mark.parametrize("key,local", STORES, ids=STORE_IDS)
def test_numpack_prefix_equals_the_local_store(s3, key, local):
    same_dicts(npkio.load_tensors(s3.url(key)), npkio.load_tensors(local))
    with npkio.safe_open(s3.url(key)) as f, npkio.safe_open(local) as g:
        assert f.keys() == g.keys()
        for name in g.keys():
            same(f.get_tensor(name), g.get_tensor(name))


@pytest.mark.parametrize("key,local", REMOTE[3:] + STORES[:3], ids=IDS[3:] + STORE_IDS[:3])
def test_shards_equal_the_local_shards(s3, key, local):
    for rank in range(2):
        spec = npkio.shard(0, rank, 2)
        same_dicts(npkio.load_tensors(s3.url(key), slices=spec),
                   npkio.load_tensors(local, slices=spec))


def test_range_size_and_concurrency(s3):
    ref = npkio.load_tensors(TINY)
    same_dicts(npkio.load_tensors(s3.url("tiny/model.safetensors"), range_size=4096,
                                  concurrency=3), ref)
    with pytest.raises(ValueError):
        npkio.load_tensors(s3.url("tiny/model.safetensors"), concurrency=-1)


def test_into_callers_arrays(s3):
    ref = npkio.load_tensors(TINY)
    name = next(n for n, a in ref.items() if a.ndim == 2)
    out = np.zeros_like(ref[name])
    got = npkio.load_tensors(s3.url("tiny/model.safetensors"), [name], into={name: out})
    assert got[name] is out
    same(out, ref[name])


@pytest.mark.parametrize("key,local", REMOTE, ids=IDS)
def test_safe_open_equals_the_local_one(s3, key, local):
    with npkio.safe_open(s3.url(key)) as f, npkio.safe_open(local) as g:
        assert f.keys() == g.keys()
        for name in g.keys():
            same(f.get_tensor(name), g.get_tensor(name))
            sl, ref = f.get_slice(name), g.get_slice(name)
            assert sl.get_shape() == ref.get_shape()
            if not ref.get_shape() or ref.get_shape()[0] < 2:
                continue
            try:
                want = ref[1:]
            except TypeError:  # packed sub-byte dtypes: refused alike
                with pytest.raises(TypeError):
                    sl[1:]
                continue
            same(sl[1:], want)


@pytest.mark.parametrize("key,local", REMOTE, ids=IDS)
def test_metadata_equals_the_local_one(s3, key, local):
    assert npkio.get_safetensors_metadata(s3.url(key)) == npkio.get_safetensors_metadata(local)
    with npkio.safe_open(s3.url(key)) as f, npkio.safe_open(local) as g:
        assert f.metadata() == (g.metadata() or None)


def test_a_missing_object_is_an_error_naming_the_url(s3):
    url = s3.url("st/absent.safetensors")
    with pytest.raises(npkio.NpkioError) as e:
        npkio.load_tensors(url)
    assert url in str(e.value)
    assert SECRET_KEY not in str(e.value)


def test_wrong_credentials_are_an_error_without_the_secret(s3, monkeypatch):
    wrong = "npkio-wrong-secret-0d5e"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    url = s3.url("tiny/model.safetensors")
    with pytest.raises(npkio.NpkioError) as e:
        npkio.load_tensors(url)
    assert url in str(e.value)
    assert wrong not in str(e.value) and SECRET_KEY not in str(e.value)


def test_torch_load_file_reads_a_url(s3):
    pytest.importorskip("torch")
    from npkio.torch import load_file

    got = load_file(s3.url("tiny/model.safetensors"))
    ref = load_file(TINY)
    assert list(got) == list(ref)
    for name in ref:
        assert got[name].dtype == ref[name].dtype
        assert bool((got[name] == ref[name]).all())


def test_an_object_replaced_after_opening_is_an_error_not_a_mix(s3):
    key = "replaced/model.safetensors"
    s3.put_file(key, TINY)
    changed = bytearray(TINY.read_bytes())
    changed[-1] ^= 0xFF  # same size, same header: only the ETag tells
    with npkio.safe_open(s3.url(key)) as f:
        name = f.offset_keys()[-1]
        before = f.get_tensor(name)
        s3.put(key, bytes(changed))
        with pytest.raises(npkio.NpkioBusyError) as e:
            f.get_tensor(name)
        assert s3.url(key) in str(e.value) and "changed" in str(e.value)
    # Opened again, it is the new object.
    again = npkio.load_tensors(s3.url(key), [name])[name]
    assert again.tobytes() != before.tobytes()
