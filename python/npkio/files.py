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
* Arrays returned are read-only zero-copy views (of the mapped file, or of the ``bytes``
  given to :func:`load`); ``copy=True`` returns writable copies instead.
"""

from __future__ import annotations

import ctypes
import json
import os
from ctypes import c_size_t
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from . import _lib
from ._dtypes import bytes_to_array, finish, row_by_name
from ._lib import check, lib, path_arg
from .io import _flags, metadata_args, prepare

__all__ = ["save_file", "load_file", "save", "load"]

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
    filename: PathLike, *, backend: str = "mmap", copy: bool = False
) -> Dict[str, np.ndarray]:
    """Load every tensor of a SafeTensors file (``safetensors.numpy.load_file``).

    Args:
        filename: the ``.safetensors`` file (a sharded checkpoint's index, or a directory
            holding one, works too).
        backend: ``"mmap"`` (the default) or ``"pread"``, as ``safetensors`` takes it.
            npkio always maps the file; ``"pread"`` returns arrays read into memory that
            npkio owns (as ``copy=True``), so that nothing refers to the file afterwards.
        copy: return writable copies instead of read-only views of the mapped file.

    Returns:
        name to array, in file order. Without ``copy``, each array is a read-only view of
        the mapped file that keeps the mapping alive for as long as it is referenced.
    """
    if backend not in ("mmap", "pread"):
        raise ValueError(f"backend must be 'mmap' or 'pread', not {backend!r}")
    copy = bool(copy) or backend == "pread"
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


def load(data: bytes, *, copy: bool = False) -> Dict[str, np.ndarray]:
    """The tensors of a SafeTensors file held in memory (``safetensors.numpy.load``).

    Args:
        data: the file's bytes (any object with the buffer protocol).
        copy: return writable copies instead of read-only views of ``data``.

    Returns:
        name to array, in the order of their offsets. Without ``copy`` each array is a
        view of ``data`` (read-only for ``bytes``) that keeps it alive.
    """
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
