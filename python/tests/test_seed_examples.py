"""Every example of the API reference npkio reproduces (tests/data/seed-safetensors-api.md,
the SafeTensors conversion API of ``numpack.io``) run as written, with only the import lines
naming ``npkio`` instead of ``numpack``; then their results checked."""

from __future__ import annotations

import re
import tempfile

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from conftest import TESTS

SPEC = TESTS / "data" / "seed-safetensors-api.md"


def python_blocks(text: str) -> list:
    """The ```python blocks of a markdown text, in order."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def as_npkio(code: str) -> str:
    """The example with its import lines naming npkio; nothing else changes."""
    out = []
    for line in code.splitlines(keepends=True):
        if re.match(r"\s*(from|import)\s+numpack\b", line):
            line = re.sub(r"\bnumpack\b", "npkio", line)
        out.append(line)
    return "".join(out)


BLOCKS = python_blocks(SPEC.read_text(encoding="utf-8"))


def run(code: str, namespace=None) -> dict:
    ns = {} if namespace is None else namespace
    exec(compile(as_npkio(code), "<seed example>", "exec"), ns)
    return ns


def test_the_spec_has_the_seven_examples():
    assert len(BLOCKS) == 7
    changed = [b for b in BLOCKS if as_npkio(b) != b]
    assert len(changed) == 7  # each one imports from numpack
    for b in BLOCKS:
        diff = [
            (x, y) for x, y in zip(b.splitlines(), as_npkio(b).splitlines()) if x != y
        ]
        assert all(re.match(r"\s*(from|import) ", x) for x, _ in diff), diff


@pytest.fixture
def model_safetensors(workdir):
    """model.safetensors as the file examples use it: weight [768, 768] F32 and others."""
    rng = np.random.default_rng(0)
    tensors = {
        "weight": rng.random((768, 768), dtype=np.float32),
        "bias": rng.random(768, dtype=np.float32),
        "layer1.weight": rng.random((16, 8), dtype=np.float32),
    }
    save_file(tensors, "model.safetensors", metadata={"format": "pt"})
    return tensors


def test_from_safetensors_example(workdir):
    ns = run(BLOCKS[0])
    got = load_npk("model.npk")
    assert set(got) == {"weight", "bias"}
    np.testing.assert_array_equal(got["weight"], ns["tensors"]["weight"])
    np.testing.assert_array_equal(got["bias"], ns["tensors"]["bias"])


def load_npk(path):
    from npkio import NumPack

    with NumPack(path) as npk:
        return {n: npk.load(n) for n in npk.get_member_list()}


def test_to_safetensors_example(workdir, capsys):
    run(BLOCKS[0])
    ns = run(BLOCKS[1])
    assert capsys.readouterr().out.strip() == "dict_keys(['bias', 'weight'])"
    assert ns["tensors"]["weight"].shape == (768, 768)
    assert ns["tensors"]["weight"].dtype == np.float32


def test_from_safetensors_file_example(model_safetensors):
    run(BLOCKS[2])
    got = load_npk("model.npk")
    assert set(got) == {"weight", "bias", "layer1.weight"}
    for name, arr in model_safetensors.items():
        np.testing.assert_array_equal(got[name], arr)


def test_from_safetensors_file_example_with_keys_only(model_safetensors):
    code = BLOCKS[2].splitlines()
    run("\n".join([code[0], code[3]]))  # the import and the keys=... line
    assert set(load_npk("model.npk")) == {"layer1.weight"}


def test_to_safetensors_file_example(model_safetensors):
    run(BLOCKS[2])
    run(BLOCKS[3])
    got = load_file("model.safetensors")
    assert set(got) == set(model_safetensors)
    for name, arr in model_safetensors.items():
        np.testing.assert_array_equal(got[name], arr)
    with safe_open("model.safetensors", framework="np") as f:
        assert f.metadata() == {"framework": "pytorch", "version": "1.0"}


def test_get_safetensors_metadata_example(model_safetensors, capsys):
    ns = run(BLOCKS[4])
    out = capsys.readouterr().out
    assert "'weight': {'shape': [768, 768], 'dtype': 'F32'" in out
    assert ns["meta"]["tensors"]["weight"]["shape"] == [768, 768]
    assert ns["meta"]["tensors"]["weight"]["dtype"] == "F32"
    assert ns["meta"]["metadata"] == {"format": "pt"}


def test_iter_safetensors_example(model_safetensors, capsys):
    run(BLOCKS[5])
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == sorted(
        ["weight: (768, 768)", "bias: (768,)", "layer1.weight: (16, 8)"]
    )


def quantize(w: np.ndarray) -> np.ndarray:
    """The pipeline's user-supplied step: symmetric int8 quantisation."""
    return (w * 127).round().clip(-127, 127).astype(np.int8)


def test_model_conversion_pipeline(workdir, capsys):
    rng = np.random.default_rng(1)
    original = {
        "encoder.weight": rng.standard_normal((64, 32), dtype=np.float32) / 4,
        "encoder.bias": rng.standard_normal(32, dtype=np.float32),
    }
    save_file(original, "original.safetensors", metadata={"format": "pt"})

    run(BLOCKS[6], {"quantize": quantize})

    assert capsys.readouterr().out.strip() == "Tensors: ['encoder.bias', 'encoder.weight']"
    got = load_file("quantized.safetensors")
    assert got["encoder.weight"].dtype == np.int8
    np.testing.assert_array_equal(got["encoder.weight"], quantize(original["encoder.weight"]))
    np.testing.assert_array_equal(got["encoder.bias"], original["encoder.bias"])
    with safe_open("quantized.safetensors", framework="np") as f:
        assert f.metadata() == {"quantization": "int8"}


def safetensors_numpy_save_bytes(data: bytes) -> bytes:
    """What safetensors.numpy.save writes for the tensors and metadata of ``data``."""
    from safetensors import safe_open  # noqa: PLC0415
    from safetensors.numpy import load, save  # noqa: PLC0415

    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(data)
        f.flush()
        with safe_open(f.name, framework="np") as h:
            metadata = h.metadata()
    return save(load(data), metadata)


def test_the_readme_example_runs(workdir, capsys):
    readme = (TESTS.parent / "README.md").read_text(encoding="utf-8")
    numpack_io, files = python_blocks(readme)
    run(numpack_io)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "{'weight': {'shape': [768, 768], 'dtype': 'F32', 'data_offsets': [0, 2359296]}}"
    assert out[1] == "{'framework': 'pytorch'}"
    assert out[2] == "weight: (768, 768)"
    assert np.asarray(load_npk("model.npk")["weight"]).dtype == np.int8

    run(files)
    assert capsys.readouterr().out.strip() == "{'embedding': (512, 64), 'bias': (64,)}"
    data = (workdir / "model.safetensors").read_bytes()
    assert safetensors_numpy_save_bytes(data) == data
