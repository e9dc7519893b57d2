"""npkio with PyTorch: npkio.torch against safetensors.torch (byte-identical files, torch's
dtypes on the way back), safe_open(framework="pt") inside transformers' from_pretrained,
and load_tensors(framework="pt") with torch dtypes, torch outputs and BF16<->F16."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")

import npkio  # noqa: E402
import npkio.torch as nt  # noqa: E402

# Every dtype torch has that SafeTensors can hold.
TORCH_DTYPES = [
    "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
    "float16", "bfloat16", "float32", "float64", "complex64", "float8_e4m3fn", "float8_e5m2",
    "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2",
]
TORCH_DTYPES = [n for n in TORCH_DTYPES if hasattr(torch, n)]


def _random(dt, shape, g):
    if dt == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    size = torch.empty((), dtype=dt).element_size()
    bits = torch.randint(0, 256, tuple(shape[:-1]) + (shape[-1] * size,), dtype=torch.uint8,
                         generator=g)
    return bits.view(dt)


def _bits(t):
    """A tensor's bytes, for comparing tensors of any dtype (NaN payloads included)."""
    return t.contiguous().view(-1).view(torch.uint8).tolist() if t.dim() else \
        t.reshape(1).view(torch.uint8).tolist()


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    d = {f"w.{n}": _random(getattr(torch, n), (3, 4), g) for n in TORCH_DTYPES}
    d["scalar"] = torch.tensor(-0.041, dtype=torch.bfloat16)
    d["empty"] = torch.empty((0, 5), dtype=torch.float16)
    d["big.int"] = torch.arange(1000, dtype=torch.int64).reshape(10, 100)
    return d


def test_save_is_byte_identical_to_safetensors_for_every_dtype(tmp_path):
    d = _tensors()
    for metadata in (None, {"format": "pt"}):
        theirs, ours = tmp_path / "theirs.safetensors", tmp_path / "ours.safetensors"
        st.save_file(d, theirs, metadata)
        nt.save_file(d, ours, metadata)
        assert ours.read_bytes() == theirs.read_bytes()
        assert nt.save(d, metadata) == st.save(d, metadata)


def test_load_file_gives_torch_dtypes_zero_copy_and_writable(tmp_path):
    d = _tensors()
    path = tmp_path / "m.safetensors"
    st.save_file(d, path, {"format": "pt"})
    before = path.read_bytes()
    for loaded in (nt.load_file(path), nt.load(before), nt.load_file(path, backend="pread")):
        assert list(loaded) == list(npkio.get_safetensors_metadata(path)["tensors"])
        for k, v in d.items():
            assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape, k
            assert _bits(loaded[k]) == _bits(v), k
    w = nt.load_file(path)
    # Over one copy-on-write mapping: neighbours in the file are neighbours in memory.
    a, b = w["w.float32"], w["w.int32"]
    assert abs(a.data_ptr() - b.data_ptr()) < len(before)
    w["w.float32"][0, 0] = 1.5
    w["scalar"].fill_(2.0)
    assert w["w.float32"][0, 0].item() == 1.5
    assert path.read_bytes() == before  # a write never reaches the file
    assert nt.load_file(path)["scalar"].item() == pytest.approx(-0.041, abs=1e-3)


def test_save_refuses_what_safetensors_refuses(tmp_path):
    base = torch.zeros(4, 4)
    for bad, exc in (({"a": base.t()}, ValueError), ({"a": base, "b": base[1]}, RuntimeError),
                     ({"a": np.zeros(3)}, ValueError), ({"a": base.to_sparse()}, ValueError),
                     ({"a": torch.zeros(2, dtype=torch.complex128)}, TypeError)):
        with pytest.raises(exc):
            nt.save_file(bad, tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())


def test_signatures_match_safetensors_torch():
    import inspect

    for name in ("save_file", "save", "load", "load_file"):
        ours = inspect.signature(getattr(nt, name)).parameters
        for p in inspect.signature(getattr(st, name)).parameters.values():
            assert p.name in ours, (name, p.name)
            assert ours[p.name].default == p.default and ours[p.name].kind == p.kind


# ----------------------------------------------------------------------------------------
# safe_open(framework="pt")


def test_safe_open_pt_gives_tensors_slices_keys_and_metadata(tmp_path):
    d = _tensors()
    path = tmp_path / "m.safetensors"
    st.save_file(d, path, {"format": "pt"})
    with npkio.safe_open(path, framework="pt", device="cpu", backend="mmap") as ours, \
            st.safe_open(path, framework="pt") as theirs:
        assert ours.keys() == theirs.keys()
        assert ours.metadata() == theirs.metadata()
        for k in theirs.keys():
            a, b = ours.get_tensor(k), theirs.get_tensor(k)
            assert a.dtype == b.dtype and a.shape == b.shape and _bits(a) == _bits(b), k
            sa, sb = ours.get_slice(k), theirs.get_slice(k)
            assert sa.get_shape() == sb.get_shape() and sa.get_dtype() == sb.get_dtype()
            if k.endswith("x2") or not b.numel() or not b.dim():
                continue
            for index in (slice(1, 3), (slice(None), slice(1, 3)), 2, (0, slice(None, None, 2))):
                x, y = sa[index], sb[index]
                assert x.dtype == y.dtype and x.shape == y.shape, (k, index)
                assert _bits(x) == _bits(y), (k, index)
        t = ours.get_tensor("w.bfloat16")
        t.add_(1)  # writable, its own memory


def _tiny_llama(tmp_path, max_shard_size):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    out = tmp_path / "model"
    model.save_pretrained(out, max_shard_size=max_shard_size)
    return transformers, model, out


@pytest.mark.parametrize("max_shard_size", ["40KB", "100MB"])
def test_from_pretrained_through_npkio_safe_open_gives_identical_logits(
    tmp_path, monkeypatch, max_shard_size
):
    transformers, model, out = _tiny_llama(tmp_path, max_shard_size)
    sharded = (out / "model.safetensors.index.json").exists()
    assert sharded == (max_shard_size == "40KB")
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    want = transformers.LlamaForCausalLM.from_pretrained(out).eval()(ids).logits

    import transformers.modeling_utils as mu

    calls = []

    def counted(*args, **kwargs):
        calls.append((args, kwargs))
        return npkio.safe_open(*args, **kwargs)

    monkeypatch.setattr(mu, "safe_open", counted)
    got_model = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    assert calls and all(kw.get("framework", a[1] if len(a) > 1 else None) == "pt"
                         for a, kw in calls)
    got = got_model(ids).logits
    assert torch.equal(got, want)
    for (k, a), b in zip(got_model.state_dict().items(), model.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), k


# ----------------------------------------------------------------------------------------
# load_tensors(framework="pt")


def test_load_tensors_pt_owns_memory_and_takes_torch_dtypes(tmp_path):
    d = _tensors()
    path = tmp_path / "m.safetensors"
    st.save_file(d, path)
    got = npkio.load_tensors(path, framework="pt")
    for k, v in d.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and _bits(got[k]) == _bits(v)
    got["w.bfloat16"].add_(1)
    bf = d["w.bfloat16"]
    for dtype in (torch.float32, "float32", "torch.float32", "F32", np.float32):
        out = npkio.load_tensors(path, ["w.bfloat16"], dtype=dtype, framework="pt")
        assert out["w.bfloat16"].dtype == torch.float32
        assert _bits(out["w.bfloat16"]) == _bits(bf.float())
    half = npkio.load_tensors(path, ["w.bfloat16"], dtype=torch.float16, framework="np")
    assert half["w.bfloat16"].dtype == np.float16
    shard = npkio.load_tensors(path, ["big.int"], slices={"big.int": npkio.shard(1, 1, 4)},
                               framework="pt")["big.int"]
    assert torch.equal(shard, d["big.int"][:, 25:50])


def test_load_tensors_into_torch_tensors_and_layout_compatible_arrays(tmp_path):
    d = _tensors()
    path = tmp_path / "m.safetensors"
    st.save_file(d, path)
    t = torch.empty(3, 4, dtype=torch.bfloat16)
    f = torch.empty(3, 4, dtype=torch.float32)
    raw = np.empty((3, 4), np.uint16)
    got = npkio.load_tensors(path, into={"w.bfloat16": t, "w.float16": f, "w.int16": raw},
                             dtype={"w.float16": torch.float32})
    assert got["w.bfloat16"] is t and _bits(t) == _bits(d["w.bfloat16"])
    assert got["w.float16"] is f
    torch.testing.assert_close(f, d["w.float16"].float(), rtol=0, atol=0, equal_nan=True)
    assert raw.tobytes() == d["w.int16"].numpy().tobytes()
    for bad, exc in ((torch.empty(3, 4, dtype=torch.float16), TypeError),
                     (torch.empty(4, 3, dtype=torch.bfloat16), ValueError),
                     (torch.empty(4, 3, dtype=torch.bfloat16).t(), ValueError),
                     (np.empty((3, 4), np.float16), TypeError)):
        with pytest.raises(exc):
            npkio.load_tensors(path, into={"w.bfloat16": bad})


def test_bf16_f16_conversions_are_bit_for_bit_torchs(tmp_path):
    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    halves = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.float16)
    path = tmp_path / "all.safetensors"
    st.save_file({"bf": every, "h": halves}, path)
    got = npkio.load_tensors(path, dtype={"bf": torch.float16, "h": "bfloat16"},
                             framework="pt")
    for name, src, dt in (("bf", every, torch.float16), ("h", halves, torch.bfloat16)):
        want = src.to(dt)
        nan = torch.isnan(want)
        assert torch.equal(torch.isnan(got[name]), nan), name
        # Every value that is not a NaN, bit for bit (zeros' signs, infinities, subnormals,
        # ties to even); NaNs keep their sign.
        assert torch.equal(got[name][~nan].view(torch.int16), want[~nan].view(torch.int16))
        assert torch.equal(torch.signbit(got[name][nan]), torch.signbit(src[nan]))


def test_a_model_directory_loads_in_python(tmp_path):
    d = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    st.save_file(d, model / "model.safetensors")
    assert torch.equal(npkio.load_tensors(model, framework="pt")["w"], d["w"])
    assert torch.equal(nt.load_file(model)["w"], d["w"])
    with npkio.safe_open(model, framework="pt") as f:
        assert f.keys() == ["w"] and torch.equal(f.get_tensor("w"), d["w"])
    np.testing.assert_array_equal(npkio.load_file(model)["w"], d["w"].numpy())


@pytest.mark.parametrize("max_shard_size", ["25KB", "40KB", "100KB"])
def test_sharded_export_splits_as_save_pretrained_does(tmp_path, max_shard_size):
    from npkio.io import from_safetensors_file, to_safetensors_file

    _, model, out = _tiny_llama(tmp_path, max_shard_size)
    npk = tmp_path / "m.npk"
    from_safetensors_file(out, npk)
    back = tmp_path / "back"
    to_safetensors_file(npk, back, max_shard_size=max_shard_size)
    weights = sorted(p.name for p in out.iterdir() if "safetensors" in p.name)
    assert sorted(p.name for p in back.iterdir()) == weights
    for name in weights:
        assert (back / name).read_bytes() == (out / name).read_bytes(), name
    # The index as npkio writes it afresh, from arrays that carry no source index.
    if len(weights) > 1:
        plain = tmp_path / "plain.npk"
        npkio.from_safetensors(npkio.load_file(out), plain)
        fresh = tmp_path / "fresh"
        to_safetensors_file(plain, fresh, max_shard_size=max_shard_size)
        index = json.loads((fresh / "model.safetensors.index.json").read_text())
        theirs = json.loads((out / "model.safetensors.index.json").read_text())
        assert index["metadata"] == theirs["metadata"]
        assert index["metadata"]["total_parameters"] == model.num_parameters()
        assert sorted(index["weight_map"]) == sorted(theirs["weight_map"])


def test_the_readme_torch_example_runs(monkeypatch, capsys):
    import re

    from conftest import REPO

    readme = (REPO / "python" / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### From PyTorch / transformers"):]
    code = re.search(r"```py\n(.*?)```", section, flags=re.S).group(1)
    monkeypatch.chdir(REPO)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert capsys.readouterr().out.splitlines() == ["BF16 [64, 64] torch.bfloat16"]
    assert scope["w"]["lm_head.weight"].dtype == torch.float32
    assert torch.equal(scope["buf"], scope["sd"]["model.norm.weight"])
