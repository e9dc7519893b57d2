"""npkio.load_tensors and npkio.safe_open against plain views and against safetensors."""

from __future__ import annotations

import gc
import random

import numpy as np
import pytest

import npkio
from conftest import FIXTURES, HAVE_ML_DTYPES, REPO

ST = FIXTURES / "safetensors"
NPK = FIXTURES / "numpack-0.7"
TINY = REPO / "examples" / "tiny-llama.safetensors"
SAFETENSORS_FILES = [
    ST / "all_dtypes.safetensors",
    ST / "edge_cases.safetensors",
    ST / "with_metadata.safetensors",
    TINY,
]
SHARDED = ST / "sharded"
NUMPACKS = [NPK / n for n in ("basic.npk", "dropped.npk", "segmented.npk", "appended.npk")]
ALL = SAFETENSORS_FILES + [SHARDED, SHARDED / "model.safetensors.index.json"] + NUMPACKS


def views(path):
    """Every tensor as the package's existing zero-copy views give it."""
    if path.is_dir() and (path / "metadata.npkm").is_file():
        return npkio.io.to_safetensors(path)
    return npkio.load_file(path)


def ids(paths):
    return [p.name if p.name != "model.safetensors.index.json" else "index.json" for p in paths]


def same(a, b):
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


# ----------------------------------------------------------------------------------------
# load_tensors


@pytest.mark.parametrize("path", ALL, ids=ids(ALL))
def test_whole_load_equals_views(path):
    ref = views(path)
    got = npkio.load_tensors(path)
    assert sorted(got) == sorted(ref)
    for name, arr in got.items():
        same(arr, ref[name])
        assert arr.flags.writeable and arr.flags.owndata
        arr[...] = arr  # writable for real


@pytest.mark.parametrize("path", ALL, ids=ids(ALL))
@pytest.mark.parametrize("method", ["auto", "buffered", "direct"])
def test_methods_and_threads(path, method):
    ref = views(path)
    got = npkio.load_tensors(path, threads=3, method=method, drop_behind=True)
    for name, arr in got.items():
        same(arr, ref[name])


def test_names_select_and_order():
    got = npkio.load_tensors(TINY, ["model.norm.weight", "lm_head.weight"])
    assert list(got) == ["model.norm.weight", "lm_head.weight"]
    got = npkio.load_tensors(TINY, "model.norm.weight")
    assert list(got) == ["model.norm.weight"]


def _matrices(path):
    return {n: a for n, a in views(path).items() if a.ndim >= 2 and a.dtype.itemsize >= 1
            and "npkio_shape" not in (a.dtype.metadata or {})}


SHARD_PATHS = [TINY, SHARDED, NPK / "basic.npk", NPK / "dropped.npk", NPK / "segmented.npk"]


@pytest.mark.parametrize("path", SHARD_PATHS, ids=ids(SHARD_PATHS))
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_join_to_the_whole(path, dim, world):
    ref = _matrices(path)
    assert ref, "the fixture has matrices"
    parts = {n: [] for n in ref}
    for rank in range(world):
        spec = npkio.shard(dim, rank, world) if rank % 2 else ("shard", dim, rank, world)
        got = npkio.load_tensors(path, list(ref), slices={n: spec for n in ref})
        for n, arr in got.items():
            n_dim = ref[n].shape[dim]
            expect_len = n_dim // world + (1 if rank < n_dim % world else 0)
            assert arr.shape[dim] == expect_len
            parts[n].append(arr)
    for n, arr in ref.items():
        same(np.concatenate(parts[n], axis=dim), arr)


@pytest.mark.parametrize("path", SHARD_PATHS, ids=ids(SHARD_PATHS))
def test_random_ranges_equal_view_slices(path):
    rng = random.Random(14)
    ref = views(path)
    for name, arr in ref.items():
        if arr.ndim == 0 or "npkio_shape" in (arr.dtype.metadata or {}):
            continue
        for _ in range(5):
            dim = rng.randrange(arr.ndim)
            n = arr.shape[dim]
            start = rng.randint(0, n)
            end = rng.randint(start, n)
            got = npkio.load_tensors(path, [name], slices={name: npkio.slice(dim, start, end)})[name]
            index = (slice(None),) * dim + (slice(start, end),)
            same(got, arr[index])


@pytest.mark.skipif(not HAVE_ML_DTYPES, reason="ml_dtypes is not installed")
def test_bf16_to_f32_equals_ml_dtypes():
    ref = views(TINY)
    bf16 = [n for n, a in ref.items() if npkio.dtype_of(a) == "BF16"]
    assert bf16
    for target in ("float32", "F32", np.float32, np.dtype("float32")):
        got = npkio.load_tensors(TINY, bf16, dtype=target)
        for n in bf16:
            assert got[n].dtype == np.float32
            same(got[n], ref[n].astype(np.float32))
    # A shard converted too.
    n = bf16[0]
    got = npkio.load_tensors(TINY, [n], slices={n: npkio.shard(1, 1, 2)}, dtype={n: "float32"})
    half = ref[n].shape[1] // 2 + ref[n].shape[1] % 2
    same(got[n], ref[n][:, half:].astype(np.float32))


@pytest.mark.skipif(not HAVE_ML_DTYPES, reason="ml_dtypes is not installed")
def test_f32_to_bf16_and_f16_round_to_nearest_even():
    import ml_dtypes

    ref = views(ST / "with_metadata.safetensors")
    got = npkio.load_tensors(ST / "with_metadata.safetensors", dtype="bfloat16")
    for n, a in ref.items():
        same(got[n], a.astype(ml_dtypes.bfloat16))
    got = npkio.load_tensors(ST / "with_metadata.safetensors", dtype=np.float16)
    for n, a in ref.items():
        same(got[n], a.astype(np.float16))


def test_single_dtype_leaves_other_tensors_as_stored():
    ref = views(ST / "all_dtypes.safetensors")
    got = npkio.load_tensors(ST / "all_dtypes.safetensors", ["f16", "i32", "u8"], dtype="F32")
    same(got["f16"], ref["f16"].astype(np.float32))
    same(got["i32"], ref["i32"])
    same(got["u8"], ref["u8"])


def test_unsupported_conversion_raises():
    with pytest.raises(npkio.NpkioUnsupportedError):
        npkio.load_tensors(ST / "all_dtypes.safetensors", ["i32"], dtype={"i32": "float32"})


def test_into_fills_callers_arrays():
    ref = views(TINY)
    name = "model.layers.0.self_attn.q_proj.weight"
    out = np.full((ref[name].shape[0] // 2,) + ref[name].shape[1:], 7, dtype=ref[name].dtype)
    norm = np.zeros(ref["model.norm.weight"].shape, np.float32)
    got = npkio.load_tensors(
        TINY, ["model.norm.weight"], into={name: out, "model.norm.weight": norm},
        slices={name: npkio.shard(0, 0, 2)},
    )
    assert got[name] is out and got["model.norm.weight"] is norm
    same(out, ref[name][: ref[name].shape[0] // 2])
    same(norm, ref["model.norm.weight"])


@pytest.mark.skipif(not HAVE_ML_DTYPES, reason="ml_dtypes is not installed")
def test_into_with_conversion():
    ref = views(TINY)
    name = "lm_head.weight"
    out = np.empty(ref[name].shape, np.float32)
    npkio.load_tensors(TINY, [], into={name: out}, dtype={name: "float32"})
    same(out, ref[name].astype(np.float32))


PATTERN = 0xAB


def _patterned(shape, dtype):
    buf = np.empty(shape, dtype=dtype)
    buf.reshape(-1).view(np.uint8)[:] = PATTERN
    return buf


def _untouched(*arrays):
    for a in arrays:
        base = a if a.base is None else a.base
        assert (base.reshape(-1).view(np.uint8) == PATTERN).all()


def _bad_requests():
    ref = views(TINY)
    q = "model.layers.0.self_attn.q_proj.weight"
    k = "model.layers.0.self_attn.k_proj.weight"
    rows, cols = ref[q].shape
    dt = ref[q].dtype
    yield "unknown tensor", dict(names=[k, "nope"]), KeyError
    yield "range past the end", dict(slices={q: npkio.slice(0, 0, rows + 1)}), ValueError
    yield "range reversed", dict(slices={q: ("range", 1, 5, 2)}), ValueError
    yield "dim past ndim", dict(slices={q: npkio.slice(2, 0, 1)}), ValueError
    yield "rank past world", dict(slices={q: npkio.shard(0, 2, 2)}), ValueError
    yield "world zero", dict(slices={q: ("shard", 0, 0, 0)}), ValueError
    yield "negative start", dict(slices={q: npkio.slice(0, -1, 2)}), ValueError
    yield "bad slice spec", dict(slices={q: (0, 1)}), TypeError
    yield "bare tuple: a range or a shard?", dict(slices={q: (0, 1, 2)}), TypeError
    yield "into wrong dtype", dict(into={q: _patterned((rows, cols), np.float32)}), TypeError
    yield "into wrong shape", dict(into={q: _patterned((rows * cols,), dt)}), ValueError
    yield "into too small", dict(into={q: _patterned((rows - 1, cols), dt)}), ValueError
    strided = _patterned((rows, 2 * cols), dt)[:, ::2]
    yield "into not contiguous", dict(into={q: strided}), ValueError
    ro = _patterned((rows, cols), dt)
    ro.flags.writeable = False
    yield "into read-only", dict(into={q: ro}), ValueError
    shared = _patterned((rows * cols,), dt)
    overlapping = {q: shared.reshape(rows, cols), k: shared[: ref[k].size].reshape(ref[k].shape)}
    yield "into overlapping", dict(into=overlapping), ValueError
    yield "unsupported conversion", dict(names=[k, "model.norm.weight"],
                                         dtype={"model.norm.weight": "int32"}), TypeError
    yield "method", dict(method="mmap"), ValueError


@pytest.mark.parametrize("case", list(range(16)))
def test_invalid_requests_write_nothing(case):
    what, kwargs, exc = list(_bad_requests())[case]
    ref = views(TINY)
    k = "model.layers.0.self_attn.k_proj.weight"
    q = "model.layers.0.self_attn.q_proj.weight"
    # A valid destination rides along with every bad request: it must stay untouched.
    witness = _patterned(ref[k].shape, ref[k].dtype)
    into = dict(kwargs.pop("into", {}))
    if k not in into:
        into[k] = witness
    with pytest.raises(exc):
        npkio.load_tensors(TINY, kwargs.pop("names", [k, q]), into=into, **kwargs)
    _untouched(witness, *into.values())


def test_frameworks_other_than_numpy_and_torch_are_refused():
    for fw in ("tf", "flax", "mlx", "paddle", None):
        with pytest.raises(ValueError, match="framework must be 'np'.*or 'pt'"):
            npkio.safe_open(TINY, framework=fw)
        with pytest.raises(ValueError, match="framework"):
            npkio.load_tensors(TINY, framework=fw)
    with pytest.raises(ValueError, match="device must be 'cpu'"):
        npkio.safe_open(TINY, framework="np", device="cuda")


# ----------------------------------------------------------------------------------------
# safe_open


def _index_expressions(shape, rng, count):
    """Seeded random basic indexes: ints (negative too), slices with steps (negative
    too) and negative bounds, Ellipsis, tuples shorter than ndim."""
    out = [(), Ellipsis, (Ellipsis,)]
    for _ in range(count):
        parts = []
        for n in shape:
            r = rng.random()
            if r < 0.2 and n:
                parts.append(rng.randrange(-n, n))
            elif r < 0.35:
                parts.append(slice(None))
            else:
                start = rng.choice([None, rng.randint(-n - 2, n + 2)])
                stop = rng.choice([None, rng.randint(-n - 2, n + 2)])
                step = rng.choice([None, 1, 2, 3, -1, -2])
                parts.append(slice(start, stop, step))
        cut = rng.randint(0, len(parts))
        if rng.random() < 0.3 and parts:
            parts = parts[:cut] + [Ellipsis] + parts[cut + 1:]
        elif rng.random() < 0.3:
            parts = parts[:cut]
        out.append(parts[0] if len(parts) == 1 and rng.random() < 0.5 else tuple(parts))
    return out


def _check_slices(f, name, full, rng, st=None, count=40):
    sl = f.get_slice(name)
    assert sl.get_shape() == list(full.shape)
    assert sl.get_dtype() == npkio.dtype_of(full)
    for index in _index_expressions(full.shape, rng, count):
        try:
            got = sl[index]
        except npkio.NpkioSliceError:
            # A bound past the end, refused as safetensors refuses it.
            if st is not None:
                with pytest.raises(Exception):
                    st.get_slice(name)[index]
            continue
        want = np.asarray(full[index])
        assert isinstance(got, np.ndarray)
        assert got.flags.writeable
        same(got, want)
        if st is not None:
            try:
                theirs = st.get_slice(name)[index]
            except BaseException as e:  # safetensors refuses negative bounds, some steps
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                continue
            same(got, theirs)


@pytest.mark.parametrize("path", SAFETENSORS_FILES, ids=ids(SAFETENSORS_FILES))
def test_safe_open_matches_safetensors(path):
    safetensors = pytest.importorskip("safetensors")
    rng = random.Random(str(path.name))
    checked = 0
    with safetensors.safe_open(str(path), framework="np") as st, npkio.safe_open(path) as f:
        assert f.keys() == st.keys()
        assert f.metadata() == st.metadata()
        for name in st.keys():
            mine = f.get_tensor(name)
            assert mine.flags.writeable and (not mine.flags.owndata or not mine.nbytes)
            assert f.get_slice(name).get_dtype() == st.get_slice(name).get_dtype()
            assert f.get_slice(name).get_shape() == list(st.get_slice(name).get_shape())
            try:
                theirs = st.get_tensor(name)
            except Exception:  # dtypes NumPy lacks (BF16, FP8, F4): npkio has them
                if "npkio_shape" not in (mine.dtype.metadata or {}):
                    _check_slices(f, name, mine, rng)
                continue
            same(mine, theirs)
            _check_slices(f, name, mine, rng, st)
            checked += 1
    assert checked


@pytest.mark.parametrize("path", [SHARDED] + NUMPACKS, ids=ids([SHARDED] + NUMPACKS))
def test_safe_open_on_sharded_and_numpack(path):
    ref = views(path)
    rng = random.Random(str(path.name))
    with npkio.safe_open(path) as f:
        assert f.keys() == sorted(ref)
        for name, arr in ref.items():
            view = f.get_tensor(name)
            assert view.flags.writeable  # a private mapping, or gathered rows
            same(view, arr)
            _check_slices(f, name, arr, rng, count=25)


def test_sharded_matches_safetensors_on_its_shards():
    safetensors = pytest.importorskip("safetensors")
    rng = random.Random(3)
    with npkio.safe_open(SHARDED) as f:
        seen = set()
        for shard_file in sorted(SHARDED.glob("*.safetensors")):
            with safetensors.safe_open(str(shard_file), framework="np") as st:
                for name in st.keys():
                    same(f.get_tensor(name), st.get_tensor(name))
                    _check_slices(f, name, st.get_tensor(name), rng, st, count=20)
                    seen.add(name)
        assert seen == set(f.keys())


def test_numpack_metadata_is_the_safetensors_sources(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    src = ST / "with_metadata.safetensors"
    npkio.from_safetensors_file(src, tmp_path / "m.npk")
    with safetensors.safe_open(str(src), framework="np") as st, \
            npkio.safe_open(tmp_path / "m.npk") as f:
        assert f.metadata() == st.metadata()
        assert f.keys() == st.keys()
        for name in st.keys():
            same(f.get_tensor(name), st.get_tensor(name))
            _check_slices(f, name, st.get_tensor(name), random.Random(name), st, count=20)
    with npkio.safe_open(NPK / "basic.npk") as f:
        assert f.metadata() is None


def test_get_tensor_outlives_the_handle():
    with npkio.safe_open(ST / "with_metadata.safetensors") as f:
        arr = f.get_tensor("encoder.weight")
        part = f.get_slice("encoder.weight")[3:5]
    want = npkio.load_tensors(ST / "with_metadata.safetensors", ["encoder.weight"])
    del f
    gc.collect()
    same(arr, want["encoder.weight"])
    same(part, want["encoder.weight"][3:5])


def test_get_slice_errors():
    with npkio.safe_open(ST / "with_metadata.safetensors") as f:
        sl = f.get_slice("encoder.weight")
        with pytest.raises(IndexError):
            sl[32]
        with pytest.raises(IndexError):
            sl[0, -17]
        with pytest.raises(IndexError):
            sl[0, 0, 0]
        with pytest.raises(KeyError):
            f.get_slice("nope")
        with pytest.raises(KeyError):
            f.get_tensor("nope")
        # Other advanced indexes fall back to NumPy on the whole tensor.
        full = f.get_tensor("encoder.weight")
        same(sl[None, 2], full[None, 2])
        same(sl[[]], full[[]])


def test_get_slice_refuses_what_safetensors_refuses():
    # safetensors' messages; the error is a SafetensorError (npkio's base) and an IndexError.
    with npkio.safe_open(ST / "with_metadata.safetensors") as f:
        sl = f.get_slice("encoder.weight")
        shape = sl.get_shape()
        cases = [
            ((slice(2, None), -shape[1] - 1),
                f"Invalid index {-shape[1] - 1} for dimension 1 of size {shape[1]}"),
            ((slice(2, None), shape[1]),
                f"Error during slicing [2:, {shape[1]}] with shape {shape}: index {shape[1]} "
                f"out of bounds for tensor dimension #1 of size {shape[1]}"),
            (slice(None, shape[0] + 5),
                f"Error during slicing [:{shape[0] + 5}] with shape {shape}: index "
                f"{shape[0] + 4} out of bounds for tensor dimension #0 of size {shape[0]}"),
        ]
        for index, message in cases:
            with pytest.raises(npkio.SafetensorError) as e:
                sl[index]
            assert isinstance(e.value, IndexError) and str(e.value) == message
        with pytest.raises(npkio.NpkioSliceError, match="Non empty lists are not implemented"):
            sl[[0, 3, 5]]


def test_get_slice_reads_only_what_the_index_needs():
    with npkio.safe_open(ST / "with_metadata.safetensors") as f:
        full = f.get_tensor("encoder.weight")  # (32, 16) float32
        sl = f.get_slice("encoder.weight")
        same(sl[3:5], full[3:5])
        assert f._last_report.bytes_out == 2 * 16 * 4
        same(sl[-1, ::3], full[-1, ::3])
        assert f._last_report.bytes_out == 16 * 4
        # The outermost dimension taken whole: the second one is narrowed.
        same(sl[:, 4:6], full[:, 4:6])
        assert f._last_report.bytes_out == 32 * 2 * 4
        same(sl[::2, 4:6], full[::2, 4:6])
        assert f._last_report.bytes_out == 31 * 16 * 4


def test_the_readme_loading_example_runs(monkeypatch, capsys):
    import re

    readme = (REPO / "python" / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Loading into memory of your own"):]
    code = re.search(r"```py\n(.*?)```", section, flags=re.S).group(1)
    monkeypatch.chdir(REPO)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "{'format': 'pt'}"
    assert out[1] == "(32, 64) (64, 32) (100, 32)"
    ref = views(TINY)
    q = "model.layers.0.self_attn.q_proj.weight"
    same(scope["mine"][q], ref[q][32:].astype(np.float32))
    same(scope["norm"], ref["model.norm.weight"])
    same(scope["rows"], ref["lm_head.weight"][100:200, ::2])


def test_the_library_refuses_overlap_and_small_capacity_too():
    # The Python package leaves these checks to the library: it validates every
    # destination before writing.
    from npkio import loader as L

    ld = L._Loader(TINY)
    q = "model.layers.0.self_attn.q_proj.weight"
    k = "model.layers.0.self_attn.k_proj.weight"
    planned = [L._plan(ld, n, None, None) for n in (q, k)]
    dt = L._array_layout(planned[0].row, planned[0].shape, planned[0].nbytes)[0]
    shared = _patterned((planned[0].shape[0] * 2,) + planned[0].shape[1:], dt)
    outs = [shared[: planned[0].shape[0]], shared[planned[0].shape[0] // 2:][: planned[1].shape[0]]]
    with pytest.raises(ValueError, match="overlap"):
        L._run(ld, planned, outs, L._options(0, "auto", False))
    _untouched(shared)
    small = _patterned((planned[1].shape[0] - 1,) + planned[1].shape[1:], dt)
    witness = _patterned(planned[0].shape, dt)
    with pytest.raises(ValueError, match="request 1 .*the output needs"):
        L._run(ld, planned, [witness, small], L._options(0, "auto", False))
    _untouched(small, witness)


def test_safe_open_of_a_checkpoint_exported_again_while_it_opens_is_one_checkpoint(
    tmp_path, monkeypatch
):
    # safe_open opens the checkpoint twice (a loader for slices, a handle for views): a
    # re-export between the two must not leave get_tensor and get_slice reading different
    # checkpoints.
    from npkio import loader as L

    stores = []
    for v in (1, 2):
        p = tmp_path / f"v{v}.npk"
        npkio.from_safetensors(
            {n: np.full(16, v, dtype=np.uint8) for n in ("a", "b")}, str(p)
        )
        stores.append(p)
    out = tmp_path / "ckpt"
    npkio.to_safetensors_file(str(stores[0]), str(out), max_shard_size=16)
    real = L._Loader
    exported = []

    def loader_then_export(path):
        ld = real(path)
        if not exported:
            exported.append(True)
            npkio.to_safetensors_file(str(stores[1]), str(out), max_shard_size=16)
        return ld

    monkeypatch.setattr(L, "_Loader", loader_then_export)
    with npkio.safe_open(out) as f:
        for n in ("a", "b"):
            assert f.get_tensor(n)[0] == 2
            assert f.get_slice(n)[:][0] == 2
    assert exported


def test_a_bare_tuple_is_no_slice_and_named_forms_are():
    q = "model.layers.0.self_attn.q_proj.weight"
    whole = npkio.load_tensors(TINY, [q])[q]
    with pytest.raises(TypeError, match="npkio.slice.*npkio.shard"):
        npkio.load_tensors(TINY, [q], slices={q: (0, 1, 2)})
    for spec in (npkio.slice(0, 1, 2), ("range", 0, 1, 2)):
        np.testing.assert_array_equal(npkio.load_tensors(TINY, [q], slices={q: spec})[q],
                                      whole[1:2])


def test_unknown_tensor_error_names_the_checkpoint():
    with pytest.raises(KeyError) as info:
        npkio.load_tensors(TINY, ["nope"])
    assert "nope" in str(info.value) and str(TINY) in str(info.value)


def test_one_shard_for_every_tensor_loads_lower_rank_tensors_whole_as_the_cli_does():
    names = list(npkio.get_safetensors_metadata(TINY)["tensors"])
    ref = npkio.load_tensors(TINY)
    got = npkio.load_tensors(TINY, slices=npkio.shard(1, 0, 2))
    for n in names:
        if ref[n].ndim > 1:
            np.testing.assert_array_equal(got[n], np.array_split(ref[n], 2, axis=1)[0])
        else:
            np.testing.assert_array_equal(got[n], ref[n])
    one_d = next(n for n in names if ref[n].ndim == 1)
    with pytest.raises(ValueError):  # asked for by name: the tensor has no dimension 1
        npkio.load_tensors(TINY, [one_d], slices={one_d: npkio.shard(1, 0, 2)})


def test_safe_open_is_closed_after_its_block_and_names_a_missing_path_as_safetensors(tmp_path):
    path = tmp_path / "m.safetensors"
    npkio.save_file({"a": np.arange(4, dtype=np.float32)}, path)
    with npkio.safe_open(path) as f:
        a = f.get_tensor("a")
        s = f.get_slice("a")
    np.testing.assert_array_equal(a, np.arange(4))  # taken before: still valid
    for use in (f.keys, f.metadata, lambda: f.get_tensor("a"), lambda: s[:2]):
        with pytest.raises(npkio.SafetensorError, match="closed"):
            use()
    with pytest.raises(FileNotFoundError) as info:
        npkio.safe_open(tmp_path / "notafile")
    assert str(info.value) == f"No such file or directory: {tmp_path / 'notafile'}"
