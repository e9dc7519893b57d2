"""The SafeTensors API of ``numpack.io`` over npkio: same names, signatures, defaults and
return types as ``numpack.io``, so ``from npkio.io import ...`` is the only change.

Memory functions
    :func:`from_tensor_dict` (dict of arrays to a NumPack directory),
    :func:`to_tensor_dict` (NumPack directory to a dict of zero-copy arrays); NumPack 0.7
    renamed them from ``from_safetensors``/``to_safetensors``, which remain as aliases.
File functions (streaming, bounded memory)
    :func:`from_safetensors_file`, :func:`to_safetensors_file`.
Utility functions
    :func:`get_safetensors_metadata`, :func:`iter_safetensors`.

Extras beyond ``numpack.io`` are keyword-only: ``threads`` (copy threads, 0 picks the
default), ``durable`` (sync to disk before the output appears, so it survives power loss),
``wait_for_lock`` (``False`` raises :class:`~npkio.NpkioBusyError` at once when another
conversion or store change holds the lock of the output's directory, instead of waiting for
it) and, for
:func:`to_safetensors_file`, ``max_shard_size`` (write a sharded checkpoint). Reading
functions accept a sharded checkpoint's ``*.safetensors.index.json`` or a directory holding
one wherever they accept a ``.safetensors`` file.

Arrays these functions return are read-only NumPy views of the mapped files (or of memory the
library holds); each keeps what it points into alive, however long it lives. See
:mod:`npkio._dtypes` for dtypes NumPy lacks (BF16, FP8, F4, F6).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import threading
from ctypes import c_size_t, c_uint64
from typing import (
    TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Tuple, TypedDict, Union,
)

import numpy as np

from . import _lib
from ._dtypes import array_input, finish, table_arrays, view_to_array
from ._lib import TensorDesc, TensorView, call_json, check, lib, path_arg, str_list

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "from_tensor_dict",
    "to_tensor_dict",
    "from_safetensors",
    "to_safetensors",
    "from_safetensors_file",
    "to_safetensors_file",
    "get_safetensors_metadata",
    "iter_safetensors",
]

if TYPE_CHECKING:
    from .numpack import NumPack

PathLike = Union[str, "os.PathLike[str]"]

#: Default chunk size for streaming conversions: 8 MiB (``NPKIO_DEFAULT_CHUNK_SIZE``).
DEFAULT_CHUNK_SIZE: int = 8 * 1024 * 1024


def _flags(durable: bool, wait_for_lock: bool, no_clobber: bool = False) -> int:
    flags = _lib.NPKIO_FLAG_DURABLE if durable else 0
    if not wait_for_lock:
        flags |= _lib.NPKIO_FLAG_NO_WAIT
    if no_clobber:
        flags |= _lib.NPKIO_FLAG_NO_CLOBBER
    return flags


_SIZE_MAX = 2 ** (8 * ctypes.sizeof(c_size_t)) - 1
_U64_MAX = 2**64 - 1


def _count(value: Any, what: str, minimum: int = 0, maximum: int = _SIZE_MAX) -> int:
    """``value`` as an integer the C ABI takes: never wrapped or truncated on the way."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum}, not {value}")
    if value > maximum:
        raise OverflowError(f"{what} must be at most {maximum}, not {value}")
    return value


# ----------------------------------------------------------------------------------------
# Memory functions


def descriptions(tensors: Mapping[str, Any], what: str) -> "Tuple[ctypes.Array, List[Any]]":
    """``NpkioTensorDesc`` for each array of ``tensors``, and the objects to keep alive
    while C reads them."""
    descs, keep, _ = prepare(tensors, what)
    return descs, keep


def prepare(
    tensors: Mapping[str, Any], what: str
) -> "Tuple[ctypes.Array, List[Any], List[np.ndarray]]":
    """``NpkioTensorDesc`` for each array of ``tensors``, the objects to keep alive while C
    reads them, and the arrays as C reads them (C-contiguous, little-endian), in order."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"{what} must be a dict of name to array, not {type(tensors).__name__}")
    keep: List[Any] = []
    arrays: List[np.ndarray] = []
    descs = (TensorDesc * max(len(tensors), 1))()
    for i, (name, value) in enumerate(tensors.items()):
        name_b = _lib.name_arg(name, f"{what} key")
        inp = array_input(value, f"{what}[{name!r}]")
        shape = (c_uint64 * max(len(inp.shape), 1))(*inp.shape)
        keep += [name_b, inp.array, shape]
        arrays.append(inp.array)
        d = descs[i]
        d.name = name_b
        d.dtype = inp.number
        d.ndim = len(inp.shape)
        d.shape = ctypes.cast(shape, ctypes.POINTER(c_uint64))
        d.data = inp.array.ctypes.data if inp.array.nbytes else None
        d.nbytes = inp.array.nbytes
    return descs, keep, arrays


def from_tensor_dict(
    tensors: Dict[str, np.ndarray],
    output_path: PathLike,
    drop_if_exists: bool = False,
    return_npk_obj: bool = False,
    *,
    threads: int = 0,
    durable: bool = False,
    wait_for_lock: bool = True,
) -> "Optional[NumPack]":
    """Save a dictionary of tensors to a NumPack directory (NumPack 0.7's name;
    :func:`from_safetensors` is the same function under its older name).

    Args:
        tensors: name to array (anything ``np.asarray`` takes). Non-contiguous arrays are
            written in C order (copied first); big-endian ones are byte-swapped; 0-d arrays,
            bool and complex128 work; BF16/FP8 as ``ml_dtypes`` arrays or tagged raw bits.
        output_path: the NumPack directory. If it exists and ``drop_if_exists`` is false,
            the tensors are merged into it (same names replaced, others kept); with
            ``drop_if_exists`` it is replaced whole. Either way in one atomic step.
        drop_if_exists: replace an existing directory instead of merging into it.
        return_npk_obj: return the directory opened as a :class:`~npkio.NumPack` (the
            caller closes it) instead of ``None``.
        threads: copy threads (0 picks the default).
        durable: sync everything to disk before the output appears.
        wait_for_lock: when another conversion or store change holds the lock of the
            output's directory, wait for it to finish (the default); with ``False``, raise
            ``NpkioBusyError`` at once.

    Raises:
        TypeError: an array of a dtype npkio cannot store.
        FileExistsError: ``output_path`` exists and is not a NumPack directory.
    """
    descs, keep = descriptions(tensors, "tensors")
    check(
        lib.npkio_from_safetensors(
            descs, len(tensors), path_arg(output_path), bool(drop_if_exists),
            DEFAULT_CHUNK_SIZE, _count(threads, "threads"), _flags(durable, wait_for_lock),
        )
    )
    del keep
    return _opened(output_path, return_npk_obj)


def _opened(path: PathLike, return_npk_obj: bool) -> "Optional[NumPack]":
    """The conversion's output opened as a ``NumPack`` when asked for (NumPack 0.7's
    ``return_npk_obj``), else ``None``."""
    if not return_npk_obj:
        return None
    from .numpack import NumPack  # noqa: PLC0415 (numpack imports this module)

    return NumPack(path)


#: ``numpack.io``'s name before NumPack 0.7 for :func:`from_tensor_dict`.
from_safetensors = from_tensor_dict


def to_tensor_dict(
    input_path: PathLike, array_names: Optional[List[str]] = None, *, copy: bool = False
) -> Dict[str, np.ndarray]:
    """Load NumPack arrays as a dictionary of tensors (NumPack 0.7's name;
    :func:`to_safetensors` is the same function under its older name).

    Args:
        input_path: the NumPack directory.
        array_names: arrays to load, in that order (all, sorted by name, if ``None``).
        copy: return writable copies that own their memory instead of read-only views.

    Returns:
        name to read-only array (writable copies with ``copy=True``). Arrays are zero-copy views of the mapped data files where
        the array is one file with no deleted rows, else gathered once into memory the
        library holds; either way each array keeps that memory alive.

    Raises:
        KeyError: a name not in the directory.
        FileNotFoundError: no such directory.
    """
    names, count = str_list(array_names, "array_names")
    h = _lib.open_handle(
        lib.npkio_to_safetensors, lib.npkio_tensors_free, path_arg(input_path), names, count
    )
    n = c_size_t()
    check(lib.npkio_tensors_count(h.ptr, ctypes.byref(n)))
    out: Dict[str, np.ndarray] = {}
    v = TensorView()
    for i in range(n.value):
        check(lib.npkio_tensors_get(h.ptr, i, ctypes.byref(v)))
        name, arr = view_to_array(h, v)
        out[name] = finish(arr, copy)
    return out


#: ``numpack.io``'s name before NumPack 0.7 for :func:`to_tensor_dict`.
to_safetensors = to_tensor_dict


# ----------------------------------------------------------------------------------------
# File functions


def from_safetensors_file(
    input_path: PathLike,
    output_path: PathLike,
    keys: Optional[List[str]] = None,
    drop_if_exists: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    return_npk_obj: bool = False,
    *,
    threads: int = 0,
    durable: bool = False,
    wait_for_lock: bool = True,
) -> "Optional[NumPack]":
    """Convert a SafeTensors file (or a sharded checkpoint) to a NumPack directory,
    streaming in bounded memory.

    Args:
        input_path: a ``.safetensors`` file, a ``*.safetensors.index.json``, or a
            directory holding one.
        output_path: the NumPack directory (merged into when it exists, as in
            :func:`from_safetensors`). The file's ``__metadata__`` is kept with the arrays
            and written back by :func:`to_safetensors_file`.
        keys: tensors to import (all if ``None``). An unknown key raises ``KeyError`` and
            nothing is written.
        drop_if_exists: replace an existing directory instead of merging into it.
        chunk_size: bytes copied at once (the bound on memory per thread).
        return_npk_obj: return the directory opened as a :class:`~npkio.NumPack` (the
            caller closes it) instead of ``None``.
        threads: copy threads (0 picks the default).
        durable: sync everything to disk before the output appears.
        wait_for_lock: when another conversion or store change holds the lock of the
            output's directory, wait for it to finish (the default); with ``False``, raise
            ``NpkioBusyError`` at once.
    """
    names, count = str_list(keys, "keys")
    check(
        lib.npkio_from_safetensors_file(
            path_arg(input_path), path_arg(output_path), names, count, bool(drop_if_exists),
            _count(chunk_size, "chunk_size", 1), _count(threads, "threads"),
            _flags(durable, wait_for_lock),
        )
    )
    return _opened(output_path, return_npk_obj)


def parse_size(size: Union[int, str]) -> int:
    """Bytes in ``size``: an int, or a string such as ``"5GB"`` (10^9 bytes each) or
    ``"500MiB"`` (2^20 bytes each), as ``transformers``' ``max_shard_size`` takes them.
    Strings are read by the library's own parser, the one the command line uses."""
    if isinstance(size, str):
        out = c_uint64()
        check(lib.npkio_parse_size(size.encode("utf-8"), ctypes.byref(out)))
        return out.value
    return _count(size, "max_shard_size", 1, _U64_MAX)


def metadata_args(metadata: Optional[Mapping[str, str]]) -> "Tuple[Any, Any, int]":
    """``metadata`` as the C ABI takes it: keys, values, count (``NULL`` keys for ``None``)."""
    if metadata is None:
        return None, None, 0
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict of str to str, not {type(metadata).__name__}")
    for k, val in metadata.items():
        if not isinstance(k, str) or not isinstance(val, str):
            raise TypeError(f"metadata must map str to str; got {k!r}: {type(val).__name__}")
    mkeys, mcount = str_list(list(metadata.keys()), "metadata key")
    mvalues, _ = str_list(list(metadata.values()), "metadata value")
    return mkeys, mvalues, mcount


def to_safetensors_file(
    input_path: PathLike,
    output_path: PathLike,
    array_names: Optional[List[str]] = None,
    metadata: Optional[Dict[str, str]] = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    max_shard_size: Union[int, str, None] = None,
    threads: int = 0,
    durable: bool = False,
    wait_for_lock: bool = True,
    no_clobber: bool = False,
) -> None:
    """Export NumPack arrays to a SafeTensors file, streaming in bounded memory.

    Args:
        input_path: the NumPack directory. Only active rows are exported.
        output_path: the ``.safetensors`` file (written beside it and renamed into place);
            with ``max_shard_size``, a directory that receives a sharded checkpoint.
        array_names: arrays to export, in that order (all, sorted by name, if ``None``).
        metadata: the ``__metadata__`` to write (str to str). ``None`` writes the metadata
            the directory carries from its SafeTensors source, if any.
        chunk_size: bytes copied at once.
        max_shard_size: write shards of at most this many tensor bytes (an int, or a string
            such as ``"5GB"`` or ``"500MiB"``) into the directory ``output_path``, laid out
            as ``save_pretrained`` does: ``model-0000k-of-0000n.safetensors`` and
            ``model.safetensors.index.json``, or one ``model.safetensors`` when everything
            fits.
        threads: copy threads (0 picks the default).
        durable: sync everything to disk before the output appears.
        wait_for_lock: when another conversion or store change holds the lock of the
            output's directory, wait for it to finish (the default); with ``False``, raise
            ``NpkioBusyError`` at once.
        no_clobber: raise ``FileExistsError`` instead of replacing an existing output (a
            sharded export: a directory that already holds weights); decided under the
            lock, so of two such exports to one absent path exactly one succeeds.

    Raises:
        TypeError: ``metadata`` keys or values that are not strings; an array of a dtype
            SafeTensors lacks (complex128).
    """
    names, count = str_list(array_names, "array_names")
    mkeys, mvalues, mcount = metadata_args(metadata)
    common = (path_arg(input_path), path_arg(output_path), names, count, mkeys, mvalues, mcount)
    knobs = (
        _count(chunk_size, "chunk_size", 1),
        _count(threads, "threads"),
        _flags(durable, wait_for_lock, no_clobber),
    )
    if max_shard_size is None:
        check(lib.npkio_to_safetensors_file(*common, *knobs))
    else:
        check(lib.npkio_to_safetensors_file_sharded(*common, parse_size(max_shard_size), *knobs))


# ----------------------------------------------------------------------------------------
# Utility functions


class TensorMetadata(TypedDict):
    """One tensor in :func:`get_safetensors_metadata`'s result."""

    shape: List[int]
    dtype: str
    data_offsets: List[int]


class SafeTensorsMetadata(TypedDict):
    """What :func:`get_safetensors_metadata` returns."""

    tensors: Dict[str, TensorMetadata]
    metadata: Dict[str, str]


def get_safetensors_metadata(path: PathLike) -> SafeTensorsMetadata:
    """Get metadata from a SafeTensors file without loading tensors.

    Only the header is read, whatever the file's size. ``path`` may also be a sharded
    checkpoint (its index, or a directory holding one): its tensors are listed shard by
    shard and its ``'metadata'`` is the first shard's. The whole description crosses the C
    boundary in one call (``npkio_safetensors_metadata_json``).

    Returns:
        ``{'tensors': {name: {'shape': [768, 768], 'dtype': 'F32', 'data_offsets': [b, e]},
        ...}, 'metadata': {key: value, ...}}``. Tensors are in file order; ``data_offsets``
        are the header's (relative to the data section of the file holding the tensor);
        ``'metadata'`` is the ``__metadata__`` section, ``{}`` when the file has none.
    """
    doc = json.loads(call_json(lib.npkio_safetensors_metadata_json, path_arg(path)))
    return {"tensors": doc["tensors"], "metadata": doc["metadata"]}


class SafeTensorsIterator(Iterator[Tuple[str, np.ndarray]]):
    """What :func:`iter_safetensors` returns: yields ``(name, array)`` pairs.

    The file is opened (and the keys checked) when it is made, not at the first ``next``;
    the whole iteration's table (names, dtypes, shapes, where the bytes are) crosses the C
    boundary then, in one call (``npkio_safetensors_iter_table_json``). Each array is a
    read-only zero-copy view of the mapped file that keeps the mapping alive; the iterator
    itself can be dropped at any time.
    """

    def __init__(
        self, path: PathLike, keys: Optional[List[str]] = None, *, copy: bool = False
    ) -> None:
        names, count = str_list(keys, "keys")
        self._copy = bool(copy)
        h = _lib.open_handle(
            lib.npkio_safetensors_iter_open, lib.npkio_safetensors_iter_free,
            path_arg(path), names, count,
        )
        table = json.loads(call_json(lib.npkio_safetensors_iter_table_json, h.ptr))
        # The arrays made reference the handle (the mapping), not this iterator.
        self._arrays: Optional[Iterator[Tuple[str, np.ndarray]]] = table_arrays(h, table)
        self._lock = threading.Lock()  # one ``next`` at a time, as on the C iterator

    def __iter__(self) -> "SafeTensorsIterator":
        return self

    def __next__(self) -> Tuple[str, np.ndarray]:
        with self._lock:
            arrays = self._arrays
            if arrays is None:
                raise StopIteration
            item = next(arrays, None)
            if item is None:
                self._arrays = None  # the arrays yielded keep the mapping alive
                raise StopIteration
        if self._copy:
            return item[0], finish(item[1], True)
        return item


def iter_safetensors(
    path: PathLike, keys: Optional[List[str]] = None, *, copy: bool = False
) -> Iterator[Tuple[str, np.ndarray]]:
    """Iterate over tensors in a SafeTensors file (or a sharded checkpoint).

    Args:
        path: a ``.safetensors`` file, a ``*.safetensors.index.json``, or a directory
            holding one.
        keys: tensors to yield, in that order (all, in file order, if ``None``). An unknown
            key raises ``KeyError`` here, before anything is yielded.
        copy: yield writable copies that own their memory instead of read-only views.

    Returns:
        an iterator of ``(name, array)``; arrays are read-only zero-copy views of the mapped
        file, valid for as long as they are referenced.
    """
    return SafeTensorsIterator(path, keys, copy=copy)
