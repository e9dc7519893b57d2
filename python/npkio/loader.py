"""Loading tensors into memory the caller owns, and a drop-in for ``safetensors.safe_open``.

* :func:`load_tensors` reads whole tensors, or a range or tensor-parallel shard of one
  dimension of each, into fresh writable arrays (or arrays the caller passes), optionally
  converting BF16/F16 to F32 and back on the way. All requests go to the library in one
  call (``npkio_load_run``), which reads them in parallel with ``pread`` or ``O_DIRECT``.
* :func:`safe_open` opens a SafeTensors file, a sharded checkpoint or a NumPack directory
  like ``safetensors.safe_open(path, framework="np")``: ``keys()``, ``metadata()``,
  ``get_tensor()`` (writable and zero-copy: a private mapping) and ``get_slice(name)[...]``, which reads
  only the rows (or columns) the index needs.

Works on the three kinds of checkpoint the loader opens: a ``.safetensors`` file, a sharded
checkpoint (its ``*.safetensors.index.json`` or the directory holding it) and a NumPack
directory (plain, segmented or with dropped rows).
"""

from __future__ import annotations

import ctypes
import os
import threading
from ctypes import c_bool, c_size_t, c_uint64, c_void_p
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import _lib
from ._dtypes import _BY_NAME, _BY_NUMBER, _BY_NUMPY_NAME, _Row, _numpy_dtype, _row_of
from ._dtypes import _sub_byte_raw_shape, raw_dtype
from ._lib import Handle, LoadOptions, LoadReport, LoadRequest, TensorView, check, lib
from ._errors import NpkioError, NpkioFileNotFoundError, NpkioSliceError, error_for_status
from ._private import numpack_array, safetensors_array
from ._lib import name_arg, path_arg, take_str

__all__ = ["load_tensors", "shard", "Shard", "range_slice", "Range", "safe_open", "SafeOpen",
           "TensorSlice"]

PathLike = Union[str, "os.PathLike[str]"]
_U64_MAX = 2**64 - 1
_FLOATS = ("F32", "F16", "BF16")
# torch's other names of dtypes, as strings.
_TORCH_ALIASES = {"half": "float16", "float": "float32", "double": "float64",
                  "float4_e2m1fn_x2": "float4_e2m1fn"}
_FRAMEWORKS = {"np": "np", "numpy": "np", "pt": "pt", "torch": "pt"}


def _framework(framework: Any) -> str:
    fw = _FRAMEWORKS.get(framework) if isinstance(framework, str) else None
    if fw is None:
        raise ValueError(
            f"framework must be 'np' (NumPy arrays) or 'pt' (torch tensors), not {framework!r}; "
            "npkio returns no other framework's tensors"
        )
    if fw == "pt":
        from . import torch as _pt  # noqa: F401, PLC0415 - the clear ImportError without torch
    return fw


class Shard(NamedTuple):
    """Rank ``rank`` of ``world`` ranks along dimension ``dim`` (see :func:`shard`)."""

    dim: int
    rank: int
    world: int


def shard(dim: int, rank: int, world: int) -> Shard:
    """The tensor-parallel slice of rank ``rank`` of ``world`` along dimension ``dim``, for
    :func:`load_tensors`' ``slices``. A dimension of length ``n`` is split in rank order:
    the first ``n % world`` ranks get ``n // world + 1`` indices, the others ``n // world``."""
    return Shard(dim, rank, world)


class Range(NamedTuple):
    """Indices ``[start, end)`` of dimension ``dim`` (see :func:`npkio.slice`)."""

    dim: int
    start: int
    end: int


def range_slice(dim: int, start: int, end: int) -> Range:
    """Indices ``[start, end)`` of dimension ``dim``, for :func:`load_tensors`' ``slices``
    (exported as ``npkio.slice``)."""
    return Range(dim, start, end)


def _int(value: Any, what: str, maximum: int = _U64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    value = int(value)
    if not 0 <= value <= maximum:
        raise ValueError(f"{what} must be between 0 and {maximum}, not {value}")
    return value


def _target_row(dtype: Any, what: str) -> _Row:
    """The npkio dtype named by ``"float32"``, ``"F32"``, ``"torch.bfloat16"``,
    ``np.float32``, ``ml_dtypes.bfloat16``, ``torch.float16``..."""
    if isinstance(dtype, str):
        name = dtype[len("torch."):] if dtype.startswith("torch.") else dtype
        row = _BY_NAME.get(name) or _BY_NUMPY_NAME.get(name) or _BY_NUMPY_NAME.get(
            _TORCH_ALIASES.get(name, "")
        )
        if row is not None:
            return row
    if type(dtype).__module__ == "torch":  # a torch.dtype; torch is imported already
        from .torch import from_torch_dtype  # noqa: PLC0415

        try:
            return _BY_NAME[from_torch_dtype(dtype)]
        except TypeError as e:
            raise TypeError(f"{what}: {e}") from None
    try:
        return _row_of(np.dtype(dtype))
    except TypeError as e:
        raise TypeError(f"{what}: {e}") from None


# ----------------------------------------------------------------------------------------
# The loader handle


class _Tensor(NamedTuple):
    row: _Row
    shape: Tuple[int, ...]


class _Loader:
    """An open ``NpkioLoader`` and the tensors it describes, by name, in checkpoint order."""

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self.handle = _lib.open_handle(lib.npkio_load_open, lib.npkio_load_free, path_arg(path))
        n = c_size_t()
        check(lib.npkio_load_count(self.handle.ptr, ctypes.byref(n)))
        self.tensors: Dict[str, _Tensor] = {}
        v = TensorView()
        for i in range(n.value):
            check(lib.npkio_load_get(self.handle.ptr, i, ctypes.byref(v)))
            name = take_str(v.name, v.name_len)
            shape = tuple(int(v.shape[k]) for k in range(v.ndim))
            self.tensors[name] = _Tensor(_BY_NUMBER[v.dtype], shape)

    def tensor(self, name: str) -> _Tensor:
        t = self.tensors.get(name)
        if t is None:
            raise error_for_status(5, f"{self.path}: no tensor named {name!r}",
                                   "NPKIO_STATUS_KEY_NOT_FOUND")
        return t


class _Planned(NamedTuple):
    """One request, resolved: what it delivers and where."""

    name: str
    request: LoadRequest
    name_b: bytes
    row: _Row
    shape: Tuple[int, ...]
    nbytes: int


def _plan(
    loader: _Loader, name: str, spec: Any, target: Optional[_Row]
) -> _Planned:
    t = loader.tensor(name)
    name_b = name_arg(name)
    req = LoadRequest()
    req.name = name_b
    req.slice, req.dim, req.start, req.end = _lib.NPKIO_LOAD_WHOLE, 0, 0, 0
    what = f"slices[{name!r}]"
    if spec is not None:
        if isinstance(spec, Shard) or (
            isinstance(spec, tuple) and len(spec) == 4 and spec[0] == "shard"
        ):
            dim, rank, world = spec if isinstance(spec, Shard) else spec[1:]
            req.slice = _lib.NPKIO_LOAD_SHARD
            req.dim = _int(dim, f"{what} dim", 2**32 - 1)
            req.start = _int(rank, f"{what} rank")
            req.end = _int(world, f"{what} world")
        elif isinstance(spec, Range) or (
            isinstance(spec, tuple) and len(spec) == 4 and spec[0] == "range"
        ):
            dim, start, end = spec if isinstance(spec, Range) else spec[1:]
            req.slice = _lib.NPKIO_LOAD_RANGE
            req.dim = _int(dim, f"{what} dim", 2**32 - 1)
            req.start = _int(start, f"{what} start")
            req.end = _int(end, f"{what} end")
        else:
            # A bare tuple is refused: (0, 1, 2) reads as rank 1 of 2 as easily as the
            # range [1, 2) of dimension 0.
            raise TypeError(
                f"{what} must be npkio.slice(dim, start, end) / ('range', dim, start, end) "
                f"or npkio.shard(dim, rank, world) / ('shard', dim, rank, world), not {spec!r}"
            )
    row = t.row
    req.dtype = _lib.NPKIO_LOAD_AS_STORED
    if target is not None and target.number != t.row.number:
        req.dtype = target.number
        row = target
    # The library checks the request (unknown tensor, slice out of range, unsupported
    # conversion) and says how many bytes it delivers.
    nbytes = c_size_t()
    check(lib.npkio_load_output_size(loader.handle.ptr, ctypes.byref(req), ctypes.byref(nbytes)))
    dims = (c_uint64 * max(len(t.shape), 1))()
    ndim = c_size_t()
    check(lib.npkio_load_output_shape(loader.handle.ptr, ctypes.byref(req), dims, len(dims),
                                      ctypes.byref(ndim)))
    shape = tuple(dims[: ndim.value])
    return _Planned(name, req, name_b, row, shape, nbytes.value)


def _array_layout(
    row: _Row, shape: Tuple[int, ...], nbytes: int
) -> Tuple[np.dtype, Tuple[int, ...]]:
    """The dtype and shape of the NumPy array that holds an output (as the views have it)."""
    dt = _numpy_dtype(row)
    if dt is not None:
        return dt, shape
    if row.bits % 8:
        return raw_dtype(row.name, shape), _sub_byte_raw_shape(shape, row.bits, nbytes)
    return raw_dtype(row.name), shape


def _raw_layout(row: _Row, shape: Tuple[int, ...], nbytes: int) -> Tuple[np.dtype, Tuple[int, ...]]:
    """As :func:`_array_layout`, with raw tagged bits for every dtype NumPy lacks (no
    ``ml_dtypes`` needed): how torch outputs are seen from NumPy."""
    if row.bits % 8 == 0 and row.name in _NATIVE_ROWS:
        return np.dtype(row.numpy_name).newbyteorder("<"), shape
    if row.bits % 8:
        return raw_dtype(row.name, shape), _sub_byte_raw_shape(shape, row.bits, nbytes)
    return raw_dtype(row.name), shape


_NATIVE_ROWS = {r.name for r in _BY_NUMBER.values() if r.numpy_name in (
    "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "float32", "float64", "complex64", "complex128")}


def _ptr(out: Any) -> Tuple[int, int]:
    """(address, bytes) of an output: a NumPy array or a torch tensor."""
    if isinstance(out, np.ndarray):
        return out.ctypes.data, out.nbytes
    return out.data_ptr(), out.numel() * out.element_size()


def _torch_out(p: _Planned) -> Any:
    """A fresh torch tensor for an output (``torch.empty``: no page is touched, no huge-page
    advice, and the tensor owns its memory)."""
    import torch  # noqa: PLC0415

    from .torch import torch_dtype  # noqa: PLC0415

    dt = torch_dtype(p.row.name)
    shape = list(p.shape)
    if p.row.name == "F4":
        if not shape or shape[-1] % 2:
            raise TypeError(f"{p.name!r}: an F4 output of shape {tuple(shape)} cannot be a "
                            "float4_e2m1fn_x2 tensor (its last dimension is odd)")
        shape[-1] //= 2
    return torch.empty(shape, dtype=dt)


def _check_into_torch(p: _Planned, t: Any, what: str) -> Any:
    from .torch import torch_dtype  # noqa: PLC0415

    want = _torch_out_meta(p)
    dt = torch_dtype(p.row.name)
    if t.dtype != dt:
        raise TypeError(f"{what} has dtype {t.dtype}; the output is {p.row.name} ({dt})")
    if t.device.type != "cpu":
        raise ValueError(f"{what} is on {t.device}; npkio fills CPU tensors only")
    if list(t.shape) != want:
        raise ValueError(f"{what} has shape {tuple(t.shape)}; the output has shape {tuple(want)}")
    if not t.is_contiguous():
        raise ValueError(f"{what} is not contiguous")
    if t.numel() * t.element_size() < p.nbytes:
        raise ValueError(f"{what} holds {t.numel() * t.element_size()} bytes; the output needs "
                         f"{p.nbytes}")
    return t


def _torch_out_meta(p: _Planned) -> List[int]:
    shape = list(p.shape)
    if p.row.name == "F4" and shape:
        shape[-1] //= 2
    return shape


def _check_into(p: _Planned, arr: Any) -> Any:
    what = f"into[{p.name!r}]"
    if type(arr).__module__.startswith("torch") and hasattr(arr, "data_ptr"):
        return _check_into_torch(p, arr, what)
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{what} must be a numpy array or a torch tensor, not "
                        f"{type(arr).__name__}")
    dt, shape = _raw_layout(p.row, p.shape, p.nbytes)
    try:
        number = _row_of(arr.dtype).number
    except TypeError:
        number = -1
    # The output's own dtype, or its raw bits as the unsigned integer of the same width.
    raw_bits = arr.dtype.kind == "u" and not arr.dtype.metadata and p.row.bits % 8 == 0
    if (number != p.row.number and not raw_bits) or arr.dtype.itemsize != dt.itemsize or \
            arr.dtype.byteorder == ">":
        raise TypeError(f"{what} has dtype {arr.dtype}; the output is {p.row.name} ({dt}, or "
                        f"its raw bits as uint{dt.itemsize * 8})")
    if tuple(arr.shape) != shape:
        raise ValueError(f"{what} has shape {tuple(arr.shape)}; the output has shape {shape}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{what} is not C-contiguous")
    if not arr.flags.writeable:
        raise ValueError(f"{what} is read-only")
    if arr.nbytes < p.nbytes:
        raise ValueError(f"{what} holds {arr.nbytes} bytes; the output needs {p.nbytes}")
    return arr


def _options(threads: int, method: str, drop_behind: bool, range_size: int = 0,
             concurrency: int = 0) -> LoadOptions:
    opts = LoadOptions()
    check(lib.npkio_load_options_init(ctypes.byref(opts), ctypes.sizeof(opts)))
    opts.threads = _int(threads, "threads", 2**32 - 1)
    if range_size:
        opts.range_size = _int(range_size, "range_size", 2**63 - 1)
    opts.concurrency = _int(concurrency, "concurrency", 2**32 - 1)
    m = _lib.NPKIO_LOAD_METHODS.get(method) if isinstance(method, str) else None
    if m is None:
        raise ValueError(f"method must be 'auto', 'buffered' or 'direct', not {method!r}")
    opts.method = m
    opts.drop_behind = bool(drop_behind)
    return opts


def _run(loader: _Loader, planned: Sequence[_Planned], outs: Sequence[Any],
         opts: LoadOptions) -> LoadReport:
    reqs = (LoadRequest * max(len(planned), 1))()
    for i, (p, arr) in enumerate(zip(planned, outs)):
        reqs[i] = p.request
        r = reqs[i]
        r.name = p.name_b
        addr, nbytes = _ptr(arr)
        r.dst = addr if p.nbytes else None
        r.capacity = nbytes
    report = LoadReport()
    keep = [p.name_b for p in planned]
    check(lib.npkio_load_run(loader.handle.ptr, reqs, len(planned), ctypes.byref(opts),
                             ctypes.byref(report)))
    del keep
    return report


def load_tensors(
    path: PathLike,
    names: Optional[Sequence[str]] = None,
    *,
    into: Optional[Mapping[str, np.ndarray]] = None,
    slices: Union[Mapping[str, Any], Shard, None] = None,
    dtype: Any = None,
    threads: int = 0,
    method: str = "auto",
    drop_behind: bool = False,
    framework: str = "np",
    range_size: int = 0,
    concurrency: int = 0,
) -> Dict[str, Any]:
    """Read tensors of a checkpoint into memory of their own (or of the caller's).

    Args:
        path: a ``.safetensors`` file, a sharded checkpoint (``*.safetensors.index.json``
            or its directory) or a NumPack directory; or the URL of one in object storage
            (``s3://bucket/key``, ``gs://``, ``az://``, ``http(s)://``: an object, an index,
            or a prefix holding one), read with concurrent ranged GETs, credentials and
            endpoint from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
            ``AWS_REGION``, ``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP=true`` for plain HTTP).
        names: tensors to load, in that order (all, in checkpoint order, if ``None``; a
            single ``str`` is one name).
        into: name to a C-contiguous writable NumPy array, or a contiguous CPU torch
            tensor, to fill instead of allocating one. Its shape must be exactly the
            output's (the slice's shape) and its dtype the output's (the converted dtype;
            a NumPy array may also hold the raw bits as the unsigned integer of the same
            width, ``uint16`` for BF16). Names in ``into`` but not in ``names`` are added
            to them.
        slices: name to ``npkio.slice(dim, start, end)`` / ``("range", dim, start,
            end)`` (indices ``[start, end)`` of dimension ``dim``), or to
            ``npkio.shard(dim, rank, world)`` / ``("shard", dim, rank, world)`` (a
            tensor-parallel rank's part; uneven splits give the first ranks one more
            index). A bare ``(dim, start, end)`` tuple is refused (``TypeError``), being
            too easily read as a shard. Tensors not named are loaded whole. A shard of
            a dimension a tensor lacks is an error. Or one ``npkio.shard(dim, rank,
            world)`` for every tensor, as ``npkio load --shard DIM,RANK,WORLD`` takes it:
            tensors without dimension ``dim`` (biases, norms) then load whole.
        dtype: convert on the way: a dict name to target dtype, or one target for every
            floating tensor (F32, F16, BF16; the others load as stored). Targets:
            ``"float32"``/``"F32"``, ``"bfloat16"``/``"BF16"``, ``"float16"``/``"F16"``,
            ``"torch.bfloat16"``, NumPy / ``ml_dtypes`` dtypes or torch dtypes
            (``torch.float32``). The library converts BF16/F16 to F32, F32 to BF16/F16,
            BF16 to F16 and F16 to BF16 (rounding to nearest even, as torch's ``.to()``);
            other pairs raise :class:`npkio.NpkioUnsupportedError`.
        threads: reading threads (0: the library chooses).
        method: ``"auto"`` (buffered reads for cached pages, ``O_DIRECT`` otherwise),
            ``"buffered"`` or ``"direct"``.
        drop_behind: drop what was read from the page cache afterwards.
        framework: ``"np"`` (NumPy arrays, the default) or ``"pt"`` (torch tensors, of
            torch's dtypes: BF16 as ``torch.bfloat16``; needs torch).
        range_size: object storage: the largest ranged GET in bytes (0: 8 MiB).
        concurrency: object storage: ranged GETs in flight (0: 16); ``threads`` is for
            local files.

    Returns:
        name to array (or torch tensor), writable and owning its memory (or the object
        from ``into``), in the order of ``names``.

    Raises:
        KeyError: an unknown tensor. ValueError / TypeError: a slice out of range, an
        invalid shard, an ``into`` array of the wrong dtype, shape or layout, overlapping
        ``into`` arrays. Every request is checked before any byte is written.
    """
    fw = _framework(framework)
    if isinstance(names, str):
        names = [names]
    into = dict(into or {})
    blanket: Optional[Shard] = None
    if isinstance(slices, Shard) or (isinstance(slices, tuple) and len(slices) == 4 and
                                     slices[0] == "shard"):
        blanket = slices if isinstance(slices, Shard) else Shard(*slices[1:])
        slices = {}
    elif slices is not None and not isinstance(slices, Mapping):
        raise TypeError("slices must be a dict of name to npkio.slice/npkio.shard, or one "
                        f"npkio.shard for every tensor, not {type(slices).__name__}")
    slices = dict(slices or {})
    loader = _Loader(path)
    wanted: List[str] = list(loader.tensors) if names is None else list(names)
    for name in into:
        if name not in wanted:
            wanted.append(name)
    if len(set(wanted)) != len(wanted):
        raise ValueError("names holds a tensor twice")
    for name in slices:
        if name not in wanted:
            raise ValueError(f"slices names {name!r}, which is not loaded")
    targets: Dict[str, Optional[_Row]] = {}
    if isinstance(dtype, Mapping):
        for name, d in dtype.items():
            if name not in wanted:
                raise ValueError(f"dtype names {name!r}, which is not loaded")
            targets[name] = _target_row(d, f"dtype[{name!r}]")
    elif dtype is not None:
        target = _target_row(dtype, "dtype")
        for name in wanted:
            if loader.tensor(name).row.name in _FLOATS:
                targets[name] = target
    opts = _options(threads, method, drop_behind, range_size, concurrency)

    if blanket is not None:
        # One shard for every tensor, as the command line's --shard: tensors with no
        # dimension `dim` (biases, norms) load whole.
        for name in wanted:
            if isinstance(blanket.dim, int) and len(loader.tensor(name).shape) > blanket.dim:
                slices[name] = blanket
    planned = [
        _plan(loader, name, slices.get(name), targets.get(name))
        for name in wanted
    ]
    outs: List[Any] = []
    for p in planned:
        if p.name in into:
            outs.append(_check_into(p, into[p.name]))
        elif fw == "pt":
            outs.append(_torch_out(p))
        else:
            dt, shape = _array_layout(p.row, p.shape, p.nbytes)
            outs.append(_empty(shape, dt))
    _run(loader, planned, outs, opts)
    return {p.name: arr for p, arr in zip(planned, outs)}


def _hugepage_switch() -> Any:
    try:
        from numpy._core.multiarray import _set_madvise_hugepage  # NumPy 2
    except ImportError:
        try:
            from numpy.core.multiarray import _set_madvise_hugepage  # NumPy 1
        except ImportError:
            return None
    return _set_madvise_hugepage


_SET_MADVISE_HUGEPAGE = _hugepage_switch()
_HUGEPAGE_LOCK = threading.Lock()


def _empty(shape: Tuple[int, ...], dt: np.dtype) -> np.ndarray:
    """A fresh array for an output, without NumPy's transparent-huge-page advice: the loader
    writes every byte once, and faulting its pages in as huge pages (zeroed 2 MiB at a time)
    made a load of fresh memory 2.5 times slower than with 4 KiB pages (measured with
    benchmarks/torch_load.py). The advice is switched off only while the array is made."""
    if _SET_MADVISE_HUGEPAGE is None:
        return np.empty(shape, dtype=dt)
    with _HUGEPAGE_LOCK:
        old = _SET_MADVISE_HUGEPAGE(False)
        try:
            return np.empty(shape, dtype=dt)
        finally:
            _SET_MADVISE_HUGEPAGE(old)


# ----------------------------------------------------------------------------------------
# safe_open


def _metadata_pairs(count_fn: Any, get_fn: Any, ptr: int) -> Dict[str, str]:
    n = c_size_t()
    check(count_fn(ptr, ctypes.byref(n)))
    k, kl, v, vl = c_void_p(), c_size_t(), c_void_p(), c_size_t()
    out = {}
    for i in range(n.value):
        check(get_fn(ptr, i, ctypes.byref(k), ctypes.byref(kl), ctypes.byref(v), ctypes.byref(vl)))
        out[take_str(k.value, kl.value)] = take_str(v.value, vl.value)
    return out


class TensorSlice:
    """What :meth:`SafeOpen.get_slice` returns: index it to read part of a tensor."""

    def __init__(self, owner: "SafeOpen", name: str) -> None:
        self._owner = owner
        self._name = name
        self._tensor = owner._loader.tensor(name)

    def get_shape(self) -> List[int]:
        """The tensor's shape."""
        return list(self._tensor.shape)

    def get_dtype(self) -> str:
        """The tensor's dtype, as SafeTensors names it (``"F32"``, ``"BF16"``)."""
        return self._tensor.row.name

    def __len__(self) -> int:
        if not self._tensor.shape:
            raise TypeError("len() of a 0-d tensor")
        return self._tensor.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        """NumPy basic indexing (ints, slices with steps, ``...``); reads only the index
        range of one dimension (the outermost one not taken whole) and applies the rest
        of the index in memory. Returns a writable array."""
        t = self._tensor
        if t.row.bits % 8:
            raise TypeError(f"get_slice cannot index packed {t.row.name} tensors")
        _refuse_as_safetensors(index, t.shape)
        key = _expand(index, len(t.shape))
        if key is None:  # advanced indexing, None, or too many indices: NumPy decides
            whole = self._owner._load(self._name, None)
            return self._owner._out(_owned(whole[index], whole), t.row)
        narrow: Optional[Tuple[int, int, int]] = None
        adjusted: List[Any] = []
        for d, (k, n) in enumerate(zip(key, t.shape)):
            lo, hi, local = _span(k, n, d)
            if narrow is None and (lo, hi) != (0, n):
                narrow = (d, lo, hi)
                adjusted.append(local)
            else:
                adjusted.append(k)
        part = self._owner._load(self._name, narrow)
        return self._owner._out(_owned(part[tuple(adjusted) + (Ellipsis,)], part), t.row)


def _int_index(it: Any) -> bool:
    return isinstance(it, (int, np.integer)) and not isinstance(it, (bool, np.bool_))


def _refuse_as_safetensors(index: Any, shape: Tuple[int, ...]) -> None:
    """Raise :class:`NpkioSliceError` with ``safetensors``' message for the indices it
    refuses: a non-empty list, a negative index past the start, an index or a slice bound
    past the end. (npkio also takes negative slice bounds and steps, which it does not.)"""
    if isinstance(index, list):
        if index:
            raise NpkioSliceError("Non empty lists are not implemented")
        return
    items = index if isinstance(index, tuple) else (index,)
    if not all(it is Ellipsis or isinstance(it, slice) or _int_index(it) for it in items):
        return
    if sum(1 for it in items if it is Ellipsis) > 1 or len(items) - (Ellipsis in items) > len(shape):
        return  # NumPy's own error follows
    dims: List[Any] = []
    for it in items:
        if it is Ellipsis:
            dims += [slice(None)] * (len(shape) - (len(items) - 1))
        else:
            dims.append(it)
    for d, it in enumerate(dims):
        if _int_index(it) and int(it) < 0 and int(it) + shape[d] < 0:
            raise NpkioSliceError(f"Invalid index {int(it)} for dimension {d} of size {shape[d]}")

    def show(d: int) -> str:
        it = dims[d]
        if isinstance(it, slice):
            text = f"{'' if it.start is None else it.start}:{'' if it.stop is None else it.stop}"
            return text if it.step in (None, 1) else f"{text}:{it.step}"
        return str(int(it) + shape[d] if int(it) < 0 else int(it))

    for d in reversed(range(len(dims))):  # safetensors reports the innermost dimension
        it, n = dims[d], shape[d]
        asked = None
        if _int_index(it):
            j = int(it) + n if int(it) < 0 else int(it)
            asked = j if j >= n else None
        elif (it.step is None or it.step > 0) and all(
            b is None or (_int_index(b) and b >= 0) for b in (it.start, it.stop)
        ):
            start = 0 if it.start is None else int(it.start)
            stop = n if it.stop is None else int(it.stop)
            if it.start is not None and start >= n and stop > start:
                asked = start
            elif stop > n:
                asked = stop - 1
        if asked is not None:
            shown = ", ".join(show(k) for k in range(len(dims)))
            raise NpkioSliceError(
                f"Error during slicing [{shown}] with shape {list(shape)}: index {asked} out "
                f"of bounds for tensor dimension #{d} of size {n}"
            )


def _expand(index: Any, ndim: int) -> Optional[Tuple[Any, ...]]:
    """``index`` as one int or slice per dimension, or ``None`` when it is anything else."""
    items = index if isinstance(index, tuple) else (index,)
    for it in items:
        if not (it is Ellipsis or isinstance(it, slice) or
                (isinstance(it, (int, np.integer)) and not isinstance(it, (bool, np.bool_)))):
            return None
    if sum(1 for it in items if it is Ellipsis) > 1:
        return None
    if Ellipsis in [it for it in items if it is Ellipsis]:
        i = next(j for j, it in enumerate(items) if it is Ellipsis)
        fill = ndim - (len(items) - 1)
        if fill < 0:
            return None
        items = items[:i] + (slice(None),) * fill + items[i + 1:]
    if len(items) > ndim:
        return None
    return tuple(items) + (slice(None),) * (ndim - len(items))


def _span(k: Any, n: int, dim: int) -> Tuple[int, int, Any]:
    """The index range ``[lo, hi)`` that ``k`` touches in a dimension of length ``n``, and
    ``k`` rewritten for that range read alone."""
    if not isinstance(k, slice):
        i = int(k)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"index {i} is out of bounds for axis {dim} with size {n}")
        return j, j + 1, 0
    start, stop, step = k.indices(n)
    count = len(range(start, stop, step))
    if count == 0:
        return 0, 0, slice(0, 0)
    last = start + (count - 1) * step
    lo, hi = (start, last + 1) if step > 0 else (last, start + 1)
    if step > 0:
        return lo, hi, slice(start - lo, last - lo + 1, step)
    stop_local = last - lo - 1
    return lo, hi, slice(start - lo, None if stop_local < 0 else stop_local, step)


def _owned(result: np.ndarray, buffer: np.ndarray) -> np.ndarray:
    """``result`` (derived from the fresh ``buffer``) as a writable array; copied when it
    holds less than the buffer, so that it does not keep the rest alive."""
    if not isinstance(result, np.ndarray):
        result = np.asarray(result)
    if result.nbytes == buffer.nbytes and result.flags.c_contiguous:
        return result
    return result.copy()


def _checkpoint_file(path: str) -> Optional[str]:
    """The file that a new checkpoint at ``path`` replaces: the index of a sharded one (as
    the core finds it), else the file itself."""
    if not os.path.isdir(path):
        return path
    standard = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(standard):
        return standard
    try:
        found = [e for e in os.listdir(path) if e.endswith(".safetensors.index.json")]
    except OSError:
        return None
    return os.path.join(path, found[0]) if len(found) == 1 else None


def _open_checkpoint_twice(path: str) -> Tuple[_Loader, Handle]:
    """The loader and the view handle of one checkpoint. Each opens it consistently (the
    core's ``Checkpoint::open``); the pair is of one checkpoint when the file that a new
    checkpoint replaces (see :func:`_checkpoint_file`), held open meanwhile so that its
    inode is not reused, is still the one at its path after both opened. npkio's writers
    replace that file last (an index) or by one rename (a single file); otherwise the two
    are opened again, and after 12 tries ``NpkioBusyError`` is raised."""
    for _ in range(12):
        pinned = _checkpoint_file(path)
        fd = None
        if pinned is not None:
            try:
                fd = os.open(pinned, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                fd = None  # the core's open says what is wrong
        try:
            loader = _Loader(path)
            handle = _lib.open_handle(
                lib.npkio_safetensors_open, lib.npkio_safetensors_free, path_arg(path)
            )
            if fd is None:
                return loader, handle
            before = os.fstat(fd)
            try:
                now = os.stat(pinned)
            except OSError:
                continue
            if (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino):
                return loader, handle
        finally:
            if fd is not None:
                os.close(fd)
    raise error_for_status(
        8,
        f"{path}: the checkpoint changed while being opened (a conversion is writing it); "
        "open it again when it is done",
        "NPKIO_STATUS_BUSY",
    )


class SafeOpen:
    """What :func:`safe_open` returns; use it as a context manager."""

    def __init__(self, path: PathLike, framework: str = "np", device: Any = "cpu") -> None:
        self._fw = _framework(framework)
        if self._fw == "np" and device != "cpu":
            raise ValueError(
                f"npkio.safe_open reads NumPy arrays into host memory: device must be 'cpu', "
                f"not {device!r}"
            )
        self._device = device
        self._path = os.fspath(path)
        self._last_report: Optional[LoadReport] = None  # of the last get_slice read
        # A URL of object storage: the loader alone reads it (tensors into memory of their
        # own; there is no file to map), and nothing looks for it on the local filesystem.
        self._remote = _lib.is_url(self._path)
        self._numpack = not self._remote and os.path.isdir(self._path) and os.path.isfile(
            os.path.join(self._path, "metadata.npkm")
        )
        self._closed = False
        try:
            if self._remote:
                self._loader = _Loader(self._path)
                self._view_handle = None
            elif self._numpack:
                self._loader = _Loader(path)
                self._view_handle: Handle = _lib.open_handle(
                    lib.npkio_numpack_open, lib.npkio_numpack_free, path_arg(path)
                )
            else:
                self._loader, self._view_handle = _open_checkpoint_twice(self._path)
        except NpkioFileNotFoundError:
            if self._remote or os.path.lexists(self._path):
                raise  # something inside it is missing: the core's message says what
            # safetensors' own words for a path that is not there.
            raise NpkioFileNotFoundError(f"No such file or directory: {self._path}") from None

    def __enter__(self) -> "SafeOpen":
        return self

    def __exit__(self, *exc: Any) -> None:
        # As in safetensors, the handle is closed: using it again raises. Arrays and tensors
        # taken keep what they need alive.
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise NpkioError(f"{self._path}: the file is closed (used after its `with` block)")

    def keys(self) -> List[str]:
        """The tensor names, sorted (as ``safetensors`` lists them)."""
        self._check_open()
        return sorted(self._loader.tensors)

    def offset_keys(self) -> List[str]:
        """The tensor names in checkpoint order."""
        self._check_open()
        return list(self._loader.tensors)

    def metadata(self) -> Optional[Dict[str, str]]:
        """The ``__metadata__`` section (for a NumPack directory, the one it keeps from its
        SafeTensors source), ``None`` when there is none (or, in object storage, when it is
        empty)."""
        self._check_open()
        if self._remote:
            from .io import get_safetensors_metadata  # noqa: PLC0415

            return get_safetensors_metadata(self._path)["metadata"] or None
        h = self._view_handle
        with h.lock:
            if self._numpack:
                md = _metadata_pairs(lib.npkio_numpack_metadata_count,
                                     lib.npkio_numpack_metadata_get, h.ptr)
                return md or None
            present = c_bool()
            check(lib.npkio_safetensors_has_metadata(h.ptr, ctypes.byref(present)))
            if not present.value:
                return None
            return _metadata_pairs(lib.npkio_safetensors_metadata_count,
                                   lib.npkio_safetensors_metadata_get, h.ptr)

    def get_tensor(self, name: str) -> Any:
        """The tensor, writable as ``safetensors`` returns it, and zero-copy: a private,
        copy-on-write mapping of its bytes made for this call (a page is copied only when
        written; writes reach neither the file nor other arrays). A NumPack array with
        segments or dropped rows, or a tensor in object storage, is read into a writable
        array of its own.

        With ``framework="pt"``, a torch tensor of torch's dtype (BF16 as
        ``torch.bfloat16``) read into memory of its own, writable, on ``device``."""
        self._check_open()
        if self._fw == "pt" or self._remote:
            t = self._loader.tensor(name)
            return self._out(self._load(name, None), t.row)
        h = self._view_handle
        v = TensorView()
        with h.lock:
            if self._numpack:
                return numpack_array(h, name)
            index = c_size_t()
            check(lib.npkio_safetensors_find(h.ptr, name_arg(name), ctypes.byref(v),
                                             ctypes.byref(index)))
            return safetensors_array(h, index.value, v)

    def get_tensors(self) -> Dict[str, np.ndarray]:
        """Every tensor, name to array, in checkpoint order (``safe_open.get_tensors``)."""
        return {name: self.get_tensor(name) for name in self.offset_keys()}

    def _out(self, arr: np.ndarray, row: _Row) -> Any:
        """What a read returns: the array, or for ``"pt"`` a torch tensor over it (on
        ``device``)."""
        if self._fw == "np":
            return arr
        from .torch import array_to_tensor  # noqa: PLC0415

        t = array_to_tensor(arr if arr.flags.c_contiguous else arr.copy(), row)
        return t if str(self._device) == "cpu" else t.to(self._device)

    def get_slice(self, name: str) -> TensorSlice:
        """A lazy slice of the tensor: ``get_shape()``, ``get_dtype()``, and indexing that
        reads only what the index needs."""
        self._check_open()
        return TensorSlice(self, name)

    def _load(self, name: str, narrow: Optional[Tuple[int, int, int]]) -> np.ndarray:
        self._check_open()
        slices = None if narrow is None else {name: Range(*narrow)}
        if narrow is not None and narrow[1] == narrow[2]:
            t = self._loader.tensor(name)
            d = narrow[0]
            shape = t.shape[:d] + (0,) + t.shape[d + 1:]
            layout = _raw_layout if self._fw == "pt" else _array_layout
            return np.empty(shape, dtype=layout(t.row, shape, 0)[0])
        planned = [_plan(self._loader, name, None if slices is None else slices[name], None)]
        layout = _raw_layout if self._fw == "pt" else _array_layout
        dt, shape = layout(planned[0].row, planned[0].shape, planned[0].nbytes)
        out = np.empty(shape, dtype=dt)
        self._last_report = _run(self._loader, planned, [out], _options(0, "auto", False))
        return out


def safe_open(
    path: PathLike, framework: str = "np", device: Any = "cpu", *, backend: str = "mmap",
    **kwargs: Any,
) -> SafeOpen:
    """Open a checkpoint as ``safetensors.safe_open(path, framework, device)`` does.

    ``path`` is a ``.safetensors`` file, a model directory holding ``model.safetensors``, a
    sharded checkpoint (its index or directory) or a NumPack directory; or the URL of one in
    object storage (``s3://bucket/key``, ...: see :func:`load_tensors`), whose tensors are
    read with ranged GETs into memory of their own.

    ``framework="np"`` returns NumPy arrays (``device`` must be ``"cpu"``);
    ``framework="pt"`` returns torch tensors of torch's dtypes, read into memory of their
    own and moved to ``device`` (any torch device: ``"cpu"``, ``0``, ``"cuda:1"``).
    Another framework raises ``ValueError``. ``backend`` (``"mmap"`` or ``"pread"``, as
    ``safetensors`` takes it) and other keyword arguments that callers such as
    transformers pass are accepted and change nothing: npkio chooses how to read.
    """
    if backend not in ("mmap", "pread"):
        raise ValueError(f"backend must be 'mmap' or 'pread', not {backend!r}")
    del kwargs
    return SafeOpen(path, framework, device)
