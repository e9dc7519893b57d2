"""Writable zero-copy arrays: private, copy-on-write mappings of the files npkio validated.

A private mapping (``MAP_PRIVATE`` with ``PROT_READ | PROT_WRITE``) reads the file's pages
as a shared read-only one does, until a page is written: the kernel then gives this
mapping its own copy of that page. Writes never reach the file or any other array; each
call that returns arrays maps anew, so arrays from two calls are independent. The
descriptor mapped comes from the library, which opened the file again and checked it is
the one it validated (``npkio_safetensors_tensor_fd``, ``npkio_numpack_data_fd``).

As with every mapping, a file truncated by another process while mapped makes reading
the missing pages fault (SIGBUS); npkio never truncates a file it published.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ._dtypes import _BY_NUMBER, bytes_to_array, finish
from ._lib import Handle, TensorView, check, lib, name_arg, take_str

__all__ = ["private_bytes", "numpack_array", "safetensors_array", "private_regions"]


def private_bytes(fd: int, offset: int, length: int) -> np.ndarray:
    """A writable ``uint8`` array over a private mapping of ``[offset, offset + length)``
    of ``fd``. Closes ``fd`` (the mapping keeps the file)."""
    try:
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        mm = mmap.mmap(
            fd, length + (offset - start), flags=mmap.MAP_PRIVATE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=start,
        )
    finally:
        os.close(fd)
    return np.frombuffer(mm, dtype=np.uint8, count=length, offset=offset - start)


def _array(v: TensorView, flat: Optional[np.ndarray]) -> "Tuple[str, np.ndarray]":
    name = take_str(v.name, v.name_len)
    shape = tuple(int(v.shape[i]) for i in range(v.ndim))
    row = _BY_NUMBER[v.dtype]
    arr = bytes_to_array(flat, row, shape, v.nbytes)
    if flat is None:  # no bytes: an empty array, writable as the others
        arr = finish(arr, True)
    return name, arr


def numpack_array(h: Handle, name: str) -> np.ndarray:
    """Array ``name`` of an open NumPack handle, writable: a private mapping of its data
    file when its bytes are that file as stored, else (segments, dropped rows) a copy of
    the rows the library gathers. Call with ``h.lock`` held."""
    v = TensorView()
    b = name_arg(name, "array_name")
    check(lib.npkio_numpack_view(h.ptr, b, ctypes.byref(v)))
    fd, n = ctypes.c_int(-1), ctypes.c_uint64()
    check(lib.npkio_numpack_data_fd(h.ptr, b, ctypes.byref(fd), ctypes.byref(n)))
    if fd.value < 0 or n.value != v.nbytes:
        if fd.value >= 0:
            os.close(fd.value)
        from ._dtypes import view_to_array  # noqa: PLC0415

        return finish(view_to_array(h, v)[1], True)
    return _array(v, private_bytes(fd.value, 0, v.nbytes))[1]


def private_regions(st: Handle, table: Dict[str, Any]) -> List[Optional[np.ndarray]]:
    """For a table of views (``npkio_safetensors_iter_table_json``), one private mapping
    per region, of the bytes the region shows, from the files ``st`` (a SafeTensors handle
    on the same checkpoint) validated; for :func:`table_arrays`'s ``bases``."""
    first: Dict[int, int] = {}
    for t, r in enumerate(table["region"]):
        first.setdefault(r, t)
    bases: List[Optional[np.ndarray]] = []
    v = TensorView()
    index = ctypes.c_size_t()
    for r, (_, n) in enumerate(table["regions"]):
        t = first.get(r)
        if not n or t is None:
            bases.append(None)
            continue
        check(lib.npkio_safetensors_find(
            st.ptr, name_arg(table["names"][t]), ctypes.byref(v), ctypes.byref(index)))
        fd, offset = ctypes.c_int(-1), ctypes.c_uint64()
        check(lib.npkio_safetensors_tensor_fd(
            st.ptr, index.value, ctypes.byref(fd), ctypes.byref(offset)))
        start = offset.value - int(table["offset"][t])
        if start < 0:
            os.close(fd.value)
            raise RuntimeError("npkio's table of views disagrees with the file's offsets")
        bases.append(private_bytes(fd.value, start, n))
    return bases


def safetensors_array(h: Handle, index: int, v: TensorView) -> np.ndarray:
    """Tensor ``index`` of a SafeTensors handle (``v`` its view) over a private mapping of
    its own bytes."""
    if not v.nbytes:
        return _array(v, None)[1]
    fd, offset = ctypes.c_int(-1), ctypes.c_uint64()
    check(lib.npkio_safetensors_tensor_fd(h.ptr, index, ctypes.byref(fd), ctypes.byref(offset)))
    return _array(v, private_bytes(fd.value, offset.value, v.nbytes))[1]
