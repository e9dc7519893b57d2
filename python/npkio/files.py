"""The file API of ``safetensors.numpy`` over npkio: :func:`save_file`, :func:`load_file`,
:func:`save` and :func:`load`, with the same names, arguments, defaults and results, so
``from npkio import save_file, load_file`` can replace ``from safetensors.numpy import
save_file, load_file``.

* Output is byte-identical to ``safetensors.numpy.save_file`` / ``save`` for the same
  dict and metadata: tensors ordered by dtype (largest alignment first) then by name,
  packed, the header padded with spaces to a multiple of 8. One difference: npkio writes
  ``metadata`` entries in the dict's order, while ``safetensors`` writes them in the order
  of a Rust ``HashMap``, which differs from one run to the next when there are several;
  with at most one entry the files are identical, otherwise equal entry for entry.
* Every dtype, BF16 and FP8 included (as ``ml_dtypes`` arrays, or raw bits tagged with
  :func:`npkio.raw_dtype`); arrays need not be contiguous or little-endian.
* :func:`save_file` writes beside the target and renames the finished file into place,
  so a failure never leaves a half-written file.
* Arrays returned are writable, as ``safetensors`` returns them: :func:`load_file` maps
  the file privately (copy-on-write: zero-copy, a page copied only when written),
  :func:`load` copies. ``copy=True`` gives copies that own their memory, ``copy=False``
  read-only views with no copy (of one shared mapping of the file, or of ``data``).
"""

from __future__ import annotations

import ctypes
import json
import os
from ctypes import c_size_t
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from . import _lib
from ._dtypes import bytes_to_array, finish, row_by_name, table_arrays
from ._errors import NpkioValueError
from ._lib import call_json, check, lib, path_arg
from ._private import private_regions
from .io import _flags, metadata_args, prepare

__all__ = ["save_file", "load_file", "save", "load", "TensorSpec", "serialize", "serialize_file"]

PathLike = Union[str, "os.PathLike[str]"]


def save_file(
    tensor_dict: Dict[str, np.ndarray],
    filename: PathLike,
    metadata: Optional[Dict[str, str]] = None,
    *,
    durable: bool = False,
    wait_for_lock: bool = True,
) -> None:
    """Save a dict of arrays to a SafeTensors file (``safetensors.numpy.save_file``).

    Args:
        tensor_dict: name to array.
        filename: the ``.safetensors`` file to write (replaced if it exists).
        metadata: the ``__metadata__`` section, str to str (``None`` writes none).
        durable: sync the file to disk before it appears.
        wait_for_lock: when another npkio call is writing the same file, wait for it (the
            default); with ``False``, raise :class:`npkio.NpkioBusyError` at once.

    Raises:
        TypeError: an array of a dtype SafeTensors lacks (complex128), or metadata that is
            not str to str.
    """
    descs, keep, _ = prepare(tensor_dict, "tensor_dict")
    mkeys, mvalues, mcount = metadata_args(metadata)
    check(
        lib.npkio_save_safetensors_file(
            descs, len(tensor_dict), mkeys, mvalues, mcount, path_arg(filename),
            _flags(durable, wait_for_lock),
        )
    )
    del keep


def _header(descs: Any, count: int, metadata: Optional[Mapping[str, str]]) -> Tuple[bytes, List[int]]:
    mkeys, mvalues, mcount = metadata_args(metadata)
    order = (c_size_t * max(count, 1))()
    need = c_size_t()
    cap = 4096 + 256 * count
    while True:
        buf = ctypes.create_string_buffer(cap)
        status = lib.npkio_safetensors_header(
            descs, count, mkeys, mvalues, mcount, buf, cap, ctypes.byref(need), order
        )
        if status == _lib.NPKIO_STATUS_BUFFER_TOO_SMALL and need.value > cap:
            cap = need.value
            continue
        check(status)
        return buf.raw[: need.value], list(order[:count])


def save(tensor_dict: Dict[str, np.ndarray], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """The bytes of the SafeTensors file :func:`save_file` would write
    (``safetensors.numpy.save``)."""
    descs, keep, arrays = prepare(tensor_dict, "tensor_dict")
    header, order = _header(descs, len(arrays), metadata)
    parts: List[Any] = [header]
    for i in order:
        a = arrays[i]
        if a.nbytes:
            parts.append(a.reshape(-1).view(np.uint8))
    del keep
    return b"".join(parts)


def load_file(
    filename: PathLike, *, backend: str = "mmap", copy: Optional[bool] = None
) -> Dict[str, np.ndarray]:
    """Load every tensor of a SafeTensors file (``safetensors.numpy.load_file``).

    Args:
        filename: the ``.safetensors`` file (a sharded checkpoint's index, or a directory
            holding one, works too).
        backend: ``"mmap"`` (the default) or ``"pread"``, as ``safetensors`` takes it.
            ``"pread"`` returns arrays read into memory they own (as ``copy=True``), so
            that nothing refers to the file afterwards.
        copy: ``None`` (the default): writable zero-copy arrays, views of a private,
            copy-on-write mapping of the file made for this call (a page is copied only
            when written; writes reach neither the file nor other calls' arrays).
            ``True``: copies that own their memory. ``False``: read-only views of one
            shared mapping (the cheapest).

    Returns:
        name to array, in file order. Mapped arrays keep their mapping alive for as long
        as they are referenced.
    """
    if backend not in ("mmap", "pread"):
        raise ValueError(f"backend must be 'mmap' or 'pread', not {backend!r}")
    if backend == "pread":
        copy = True
    if copy is None:
        # The table of the file's views (one C call), over private mappings of the same
        # bytes: one a file, from the descriptor the library checked.
        it = _lib.open_handle(lib.npkio_safetensors_iter_open, lib.npkio_safetensors_iter_free,
                              path_arg(filename), None, 0)
        table = json.loads(call_json(lib.npkio_safetensors_iter_table_json, it.ptr))
        st = _lib.open_handle(lib.npkio_safetensors_open, lib.npkio_safetensors_free,
                              path_arg(filename))
        return dict(table_arrays(None, table, private_regions(st, table)))
    # One reading path for the whole file: every tensor as a view of one mapping.
    from .io import iter_safetensors  # noqa: PLC0415

    return {name: finish(arr, copy) for name, arr in iter_safetensors(filename)}


def _describe_bytes(view: memoryview) -> Dict[str, Any]:
    n = view.nbytes
    arr = np.frombuffer(view, dtype=np.uint8)
    need = c_size_t()
    cap = 4096
    while True:
        buf = ctypes.create_string_buffer(cap)
        status = lib.npkio_safetensors_bytes_json(
            arr.ctypes.data if n else None, n, buf, cap, ctypes.byref(need)
        )
        if status == _lib.NPKIO_STATUS_BUFFER_TOO_SMALL and need.value > cap:
            cap = need.value
            continue
        check(status)
        return json.loads(buf.raw[: need.value])


def load(data: bytes, *, copy: Optional[bool] = None) -> Dict[str, np.ndarray]:
    """The tensors of a SafeTensors file held in memory (``safetensors.numpy.load``).

    Args:
        data: the file's bytes (any object with the buffer protocol).
        copy: ``None`` (the default) or ``True``: writable copies, as ``safetensors``
            returns. ``False``: views of ``data`` (read-only for ``bytes``) that keep it
            alive, with no copy.

    Returns:
        name to array, in the order of their offsets.
    """
    copy = True if copy is None else bool(copy)
    view = memoryview(data).cast("B")
    desc = _describe_bytes(view)
    flat = np.frombuffer(view, dtype=np.uint8)
    start = int(desc["data_start"])
    out: Dict[str, np.ndarray] = {}
    for name, t in desc["tensors"].items():
        begin, end = (start + int(x) for x in t["data_offsets"])
        shape = tuple(int(d) for d in t["shape"])
        arr = bytes_to_array(flat[begin:end] if end > begin else None,
                             row_by_name(t["dtype"]), shape, end - begin)
        out[name] = finish(arr, copy)
    return out


# ----------------------------------------------------------------------------------------
# safetensors' raw-pointer API: TensorSpec, serialize, serialize_file

#: ``TensorSpec``'s dtype names (NumPy's and ``ml_dtypes``' spelling) -> SafeTensors names.
_SPEC_DTYPES = {
    "bool": "BOOL", "int8": "I8", "uint8": "U8", "int16": "I16", "uint16": "U16",
    "int32": "I32", "uint32": "U32", "int64": "I64", "uint64": "U64",
    "float16": "F16", "float32": "F32", "float64": "F64", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2": "F8_E5M2",
    "float8_e5m2fnuz": "F8_E5M2FNUZ", "float8_e8m0fnu": "F8_E8M0",
    "float4_e2m1fn_x2": "F4", "complex64": "C64",
}


class TensorSpec:
    """One tensor given by address for :func:`serialize` / :func:`serialize_file`
    (``safetensors.TensorSpec``): ``TensorSpec(dtype, shape, data_ptr, data_len)``.

    ``dtype`` is NumPy's name (``"float32"``, ``"bfloat16"``, ``"float8_e4m3fn"``, ...),
    checked here: an unknown one raises :class:`npkio.SafetensorError`. ``shape`` is the
    logical shape; for ``float4_e2m1fn_x2`` (two values a byte) the storage shape may be
    given, and its last dimension is doubled, as ``safetensors`` does. ``data_ptr`` is the
    address of ``data_len`` bytes in C order, little-endian, which the caller keeps alive
    and unchanged while a call that takes this spec runs.
    """

    __slots__ = ("dtype", "shape", "data_ptr", "data_len")

    def __init__(self, dtype: str, shape: Any, data_ptr: int, data_len: int) -> None:
        if dtype not in _SPEC_DTYPES:
            raise NpkioValueError(
                f"invalid dtype {dtype!r}: expected one of {', '.join(_SPEC_DTYPES)}"
            )
        dims = [int(d) for d in shape]
        row = row_by_name(_SPEC_DTYPES[dtype])
        if row.bits == 4 and dims:
            elements = 1
            for d in dims:
                elements *= d
            if elements * row.bits // 8 != int(data_len):
                dims[-1] *= 2  # the storage shape: two values a byte
        self.dtype = dtype
        self.shape = dims
        self.data_ptr = int(data_ptr)
        self.data_len = int(data_len)

    def __repr__(self) -> str:
        return (f"TensorSpec(dtype={self.dtype!r}, shape={self.shape}, "
                f"data_ptr={self.data_ptr}, data_len={self.data_len})")

    def _array(self, name: str) -> np.ndarray:
        row = row_by_name(_SPEC_DTYPES[self.dtype])
        elements = 1
        for d in self.shape:
            elements *= d
        bits = elements * row.bits
        if bits % 8 or bits // 8 != self.data_len:
            raise NpkioValueError(
                f"Error while serializing: tensor {name!r}: shape {self.shape} of "
                f"{self.dtype} needs {(bits + 7) // 8} bytes, data_len is {self.data_len}"
            )
        if self.data_len and not self.data_ptr:
            raise NpkioValueError(f"Error while serializing: tensor {name!r}: data_ptr is 0")
        flat = None
        if self.data_len:
            buf = (ctypes.c_uint8 * self.data_len).from_address(self.data_ptr)
            flat = np.frombuffer(buf, dtype=np.uint8)
        return bytes_to_array(flat, row, tuple(self.shape), self.data_len)


def _spec_arrays(tensor_dict: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    if not isinstance(tensor_dict, Mapping):
        raise TypeError(
            f"tensor_dict must be a dict of name to TensorSpec, not {type(tensor_dict).__name__}"
        )
    out = {}
    for name, spec in tensor_dict.items():
        if not isinstance(spec, TensorSpec):
            raise TypeError(
                f"tensor_dict[{name!r}] must be a TensorSpec, not {type(spec).__name__}"
            )
        out[name] = spec._array(name)
    return out


def serialize(
    tensor_dict: Mapping[str, TensorSpec], metadata: Optional[Dict[str, str]] = None
) -> bytes:
    """The bytes of a SafeTensors file of tensors given by address
    (``safetensors.serialize``): the same bytes :func:`save` makes of the same arrays.

    Raises:
        TypeError: a value that is not a :class:`TensorSpec`.
        npkio.SafetensorError: a spec whose ``data_len`` does not fit its shape and dtype.
    """
    return save(_spec_arrays(tensor_dict), metadata)


def serialize_file(
    tensor_dict: Mapping[str, TensorSpec],
    filename: PathLike,
    metadata: Optional[Dict[str, str]] = None,
) -> None:
    """Write a SafeTensors file of tensors given by address (``safetensors.serialize_file``),
    as :func:`save_file` writes it. The library writes without holding the GIL."""
    save_file(_spec_arrays(tensor_dict), filename, metadata)
