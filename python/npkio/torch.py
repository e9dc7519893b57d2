"""The file API of ``safetensors.torch`` over npkio: :func:`save_file`, :func:`load_file`,
:func:`save` and :func:`load`, with the same names, arguments and defaults, so that ``from
npkio.torch import save_file, load_file`` can replace ``from safetensors.torch import
save_file, load_file``.

* Output is byte-identical to ``safetensors.torch.save_file`` / ``save`` for the same dict
  and metadata, for every dtype both know: bool, the integers, float16, bfloat16,
  float32/64, complex64, the float8 kinds and float4_e2m1fn_x2 (written as ``F4`` with
  the last dimension counted in elements, as ``safetensors`` does). One difference:
  ``safetensors`` orders two or more ``metadata`` entries by a randomized hash map, npkio
  keeps the dict's order; with at most one entry the files are identical.
* :func:`load_file` maps the file copy-on-write and returns tensors of torch's own dtypes
  (BF16 as ``torch.bfloat16``, F8_E8M0 as ``torch.float8_e8m0fnu``...) over that mapping:
  zero-copy while they are only read, writable (a write copies the page it touches and
  never reaches the file), each keeping the mapping alive. Tensors whose bytes are not
  aligned to their element size in the file are copied. :func:`load` copies the bytes
  once into memory of its own and returns writable tensors over it.
* A model directory holding ``model.safetensors``, and a sharded checkpoint (its
  ``*.safetensors.index.json`` or the directory holding it), load too.

This module needs PyTorch; ``import npkio`` does not.
"""

from __future__ import annotations

import json
import mmap
import os
from typing import Any, Dict, List, Optional, Tuple, Union

try:
    import torch
except ImportError as _e:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "npkio.torch needs PyTorch, and the 'torch' package is not installed "
        "(pip install torch); npkio without it reads and writes NumPy arrays"
    ) from _e

import numpy as np

from . import files as _files
from . import _lib
from ._dtypes import _BY_NAME, _Row, raw_dtype

__all__ = ["save_file", "load_file", "save", "load", "torch_dtype", "from_torch_dtype"]

PathLike = Union[str, "os.PathLike[str]"]

# SafeTensors name -> torch dtype name (those this torch lacks are left out below).
_TORCH_NAMES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
    "I32": "int32", "U32": "uint32", "I64": "int64", "U64": "uint64", "F16": "float16",
    "BF16": "bfloat16", "F32": "float32", "F64": "float64", "C64": "complex64",
    "complex128": "complex128", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu", "F4": "float4_e2m1fn_x2",
}
_TO_TORCH: Dict[str, Any] = {
    k: getattr(torch, v) for k, v in _TORCH_NAMES.items() if hasattr(torch, v)
}
_FROM_TORCH: Dict[Any, str] = {v: k for k, v in _TO_TORCH.items()}
# Unsigned integers of each width, to move raw bits between NumPy and torch.
_NP_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def torch_dtype(name: str) -> Any:
    """The torch dtype of a SafeTensors dtype name (``"BF16"`` -> ``torch.bfloat16``).

    Raises ``TypeError`` for a dtype torch lacks (F6) or that this torch is too old for."""
    t = _TO_TORCH.get(name)
    if t is None:
        raise TypeError(f"torch {torch.__version__} has no dtype for {name} tensors")
    return t


def from_torch_dtype(dtype: Any) -> str:
    """The SafeTensors name of a torch dtype (``torch.bfloat16`` -> ``"BF16"``)."""
    name = _FROM_TORCH.get(dtype)
    if name is None:
        raise TypeError(f"npkio cannot store torch tensors of dtype {dtype}")
    return name


# ----------------------------------------------------------------------------------------
# torch tensor <-> NumPy array of the same bytes


def tensor_to_array(t: Any, what: str) -> np.ndarray:
    """A NumPy array over the bytes of the CPU tensor ``t`` (zero-copy when ``t`` is a
    contiguous CPU tensor), of the dtype npkio writes for it: NumPy's own, or raw bits
    tagged with their SafeTensors dtype (BF16, FP8, F4)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, not {type(t).__name__}")
    name = from_torch_dtype(t.dtype)
    row = _BY_NAME[name]
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    t = t.contiguous()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    size = t.element_size()
    if name == "F4":
        shape = tuple(t.shape[:-1]) + (t.shape[-1] * 2,) if t.dim() else (2,)
        return t.view(torch.uint8).numpy().view(raw_dtype("F4", shape))
    if row.numpy_name in ("bfloat16",) or name.startswith("F8"):
        bits = t.view(getattr(torch, _NP_UINT[size].__name__)).numpy()
        return bits.view(raw_dtype(name))
    return t.numpy()


def _flatten(tensors: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """What ``safetensors.torch`` refuses, refused the same way; the rest as arrays."""
    if not isinstance(tensors, dict):
        raise ValueError(f"Expected a dict of [str, torch.Tensor] but received {type(tensors)}")
    spans: List[Tuple[int, int, str]] = []
    out = {}
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"Key `{k}` is invalid, expected torch.Tensor but received {type(v)}")
        if v.layout != torch.strided:
            raise ValueError(f"You are trying to save a sparse tensor: `{k}`, which npkio "
                             "does not support; make it dense with `.to_dense()` first")
        if not v.is_contiguous():
            raise ValueError(f"You are trying to save a non contiguous tensor: `{k}` which is "
                             "not allowed; call `.contiguous()` on it first")
        if v.device.type == "cpu" and v.numel():
            begin = v.data_ptr()
            spans.append((begin, begin + v.numel() * v.element_size(), k))
        out[k] = tensor_to_array(v, f"tensors[{k!r}]")
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:
            raise RuntimeError(
                f"Some tensors share memory, this will lead to duplicate memory on disk and "
                f"potential differences when loading them again: {[a, b]}"
            )
    return out


def save_file(
    tensors: Dict[str, Any],
    filename: PathLike,
    metadata: Optional[Dict[str, str]] = None,
) -> None:
    """Save a dict of tensors to a SafeTensors file (``safetensors.torch.save_file``).

    Tensors must be contiguous and dense, and must not share memory (as
    ``safetensors.torch`` requires); tensors on another device are copied to the CPU. The
    file is written beside ``filename`` and renamed into place.
    """
    _files.save_file(_flatten(tensors), filename, metadata)


def save(tensors: Dict[str, Any], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """The bytes of the SafeTensors file :func:`save_file` would write
    (``safetensors.torch.save``)."""
    return _files.save(_flatten(tensors), metadata)


# ----------------------------------------------------------------------------------------
# Loading


def _tensors_over(buf: Any, desc: Dict[str, Any]) -> Dict[str, Any]:
    """Tensors over ``buf`` (a writable buffer holding a SafeTensors file) as ``desc``
    (``npkio_safetensors_bytes_json``'s description of it) places them."""
    start = int(desc["data_start"])
    out: Dict[str, Any] = {}
    for name, t in desc["tensors"].items():
        begin, end = (start + int(x) for x in t["data_offsets"])
        shape = [int(d) for d in t["shape"]]
        dt = torch_dtype(t["dtype"])
        if t["dtype"] == "F4":
            if not shape or shape[-1] % 2:
                raise TypeError(f"{name!r}: F4 tensor of shape {shape} cannot be a "
                                "float4_e2m1fn_x2 tensor (its last dimension is odd)")
            shape[-1] //= 2
        if end == begin:
            out[name] = torch.empty(shape, dtype=dt)
            continue
        size = torch.empty((), dtype=dt).element_size()
        if begin % size:  # not aligned in the mapping: a copy that is
            raw = torch.frombuffer(buf, dtype=torch.uint8, count=end - begin, offset=begin)
            out[name] = raw.clone().view(dt).reshape(shape)
        else:
            out[name] = torch.frombuffer(
                buf, dtype=dt, count=(end - begin) // size, offset=begin
            ).reshape(shape)
    return out


def _single_files(path: str) -> List[str]:
    """The SafeTensors files of a checkpoint: ``path`` itself, the ``model.safetensors`` of
    a model directory, or the shards an index names (checked by npkio's own reader)."""
    from .io import get_safetensors_metadata  # noqa: PLC0415

    # npkio's reader decides what the path is and checks an index against its shards.
    get_safetensors_metadata(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "model.safetensors")) and not any(
            n.endswith(".safetensors.index.json") for n in os.listdir(path)
        ):
            return [os.path.join(path, "model.safetensors")]
        index = os.path.join(path, "model.safetensors.index.json")
        if not os.path.isfile(index):
            index = next(os.path.join(path, n) for n in sorted(os.listdir(path))
                         if n.endswith(".safetensors.index.json"))
    elif path.endswith(".json"):
        index = path
    else:
        return [path]
    with open(index, "rb") as f:
        weight_map = json.load(f)["weight_map"]
    base = os.path.dirname(index)
    return [os.path.join(base, n) for n in sorted(set(weight_map.values()))]


def _map_file(path: str) -> Dict[str, Any]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return _tensors_over(bytearray(), _files._describe_bytes(memoryview(b"")))
        # Copy-on-write: tensors may be written, and a write never reaches the file.
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    # The description is made from the mapped bytes themselves (npkio checks them), so
    # the tensors are placed by exactly the header they lie under.
    return _tensors_over(buf, _files._describe_bytes(memoryview(buf)))


def load_file(
    filename: PathLike, device: Union[str, int] = "cpu", *, backend: str = "mmap"
) -> Dict[str, Any]:
    """Load the tensors of a SafeTensors file (``safetensors.torch.load_file``).

    Args:
        filename: a ``.safetensors`` file, a model directory holding ``model.safetensors``,
            or a sharded checkpoint (its index or directory).
        device: where the tensors go (``"cpu"``, the default, keeps them over the mapping;
            any other torch device copies them there).
        backend: ``"mmap"`` (the default) or ``"pread"``; with ``"pread"`` the tensors are
            read into memory of their own (:func:`npkio.load_tensors`) and nothing refers
            to the file afterwards.

    Returns:
        name to tensor, in file order (shard by shard), of torch's dtypes.
    """
    if backend not in ("mmap", "pread"):
        raise ValueError(f"backend must be 'mmap' or 'pread', not {backend!r}")
    path = os.fspath(filename)
    if backend == "pread" or _lib.is_url(path):  # nothing to map in object storage
        from .loader import load_tensors  # noqa: PLC0415

        out = load_tensors(path, framework="pt")
    else:
        out = {}
        for f in _single_files(path):
            out.update(_map_file(f))
    if str(device) != "cpu":
        out = {k: v.to(device) for k, v in out.items()}
    return out


def load(data: bytes) -> Dict[str, Any]:
    """The tensors of a SafeTensors file held in memory (``safetensors.torch.load``): one
    copy of ``data`` into memory of its own, and writable tensors over it."""
    buf = bytearray(data)
    return _tensors_over(buf, _files._describe_bytes(memoryview(buf)))


# ----------------------------------------------------------------------------------------
# For npkio.loader: NumPy arrays as torch tensors


def array_to_tensor(arr: np.ndarray, row: _Row) -> Any:
    """The tensor of dtype ``row`` over the same memory as ``arr`` (which holds its bytes in
    C order: NumPy's own dtype, or raw bits of the same width). Zero-copy."""
    dt = torch_dtype(row.name)
    if row.name == "F4":
        shape = list(arr.shape)
        t = torch.from_numpy(np.ascontiguousarray(arr).view(np.uint8))
        return t.view(dt).reshape(shape)
    if row.numpy_name in ("bool", "complex64", "complex128", "float16", "float32", "float64"):
        return torch.from_numpy(arr.view(np.dtype(row.numpy_name)))
    size = arr.dtype.itemsize
    t = torch.from_numpy(arr.view(_NP_UINT[size]))
    return t if t.dtype == dt else t.view(dt)
