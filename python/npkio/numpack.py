"""``NumPack``: a NumPack directory, as a conversion pipeline uses it::

    with NumPack('model.npk') as npk:
        weight = npk.load('encoder.weight')
        npk.save({'encoder.weight': quantize(weight)})
"""

from __future__ import annotations

import ctypes
import gc
import json
import operator
import os
import sys
import warnings
from ctypes import c_size_t
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _lib
from ._dtypes import _BY_NUMBER, array_input, finish, view_to_array
from ._private import numpack_array
from ._lib import (
    ArrayInfo, Handle, Rows, TensorView, call_json, check, lib, name_arg, path_arg,
)
from .io import descriptions

__all__ = ["NumPack", "NumPackStateError"]

PathLike = Union[str, "os.PathLike[str]"]
Indexes = Union[int, slice, Sequence[int], np.ndarray]

#: NumPack 0.7's names of its dtype codes, as its ``get_metadata`` spells them.
_NUMPACK_DTYPE_NAMES = [
    "Bool", "Uint8", "Uint16", "Uint32", "Uint64", "Int8", "Int16", "Int32", "Int64",
    "Float16", "Float32", "Float64", "Complex64", "Complex128",
]


class NumPackStateError(RuntimeError, ValueError):
    """A call on a closed ``NumPack``, or outside a ``with`` block in
    ``strict_context_mode``. A ``RuntimeError`` as in NumPack 0.7, and a ``ValueError`` as
    npkio raised before."""


class NumPack:
    """A NumPack directory (NumPack 0.7's on-disk format), opened for reading and changing.

    ``NumPack(path)`` opens the directory, creating an empty one if there is none; with
    ``drop_if_exists=True`` an existing NumPack directory is emptied first, all or none (only
    on this first opening, not on a later :meth:`open`; files npkio does not know stay). A path that exists but is not a NumPack
    directory is never removed: that raises an error. Use it as a context manager, or call
    :meth:`close` when done.

    Arrays from :meth:`load` are writable zero-copy private (copy-on-write) mappings of
    the data files where possible (see :meth:`load`). Each keeps what it points into
    alive, so it stays valid after :meth:`close`, after the ``NumPack`` object is gone, and
    after the array is replaced, appended to or dropped through this object (it keeps
    showing the bytes it was loaded with). Every change is on disk when its method returns.

    Each change (one :meth:`save`, one array's :meth:`append` or :meth:`drop`) is all or
    none: if the process is killed or a write fails at any point, the directory reads as
    before the change or as after it, here and in NumPack 0.7 (one exception for NumPack
    0.7 alone: just before replacing an array that has dropped rows, it shows that
    array's dropped rows again; see docs/guarantees.md). A failed change raises and leaves this object describing the
    directory as before. A change holds the lock conversions into the directory hold, and
    raises :class:`FileNotFoundError` (``NpkioFileNotFoundError``) if a conversion
    replaced the directory since it was opened, or :class:`BlockingIOError`
    (``NpkioBusyError``) if another writer changed it since; reopen it then. Reading an
    array (:meth:`load`, :meth:`getitem`, ``[]``) after another writer changed the store
    reads it as it is now if its dtype and shape are still those this object describes (an
    array the change did not touch, or one rewritten with its dtype and shape: one whole
    state of it, never a mix); if they are not, or the array is gone, it raises
    :class:`BlockingIOError` (``NpkioBusyError``): reopen it then.

    Methods may be called from several threads; calls on one object run one at a time.

    Args:
        filename: the directory.
        drop_if_exists: remove an existing NumPack directory first.
        strict_context_mode: as in NumPack 0.7: every method raises
            :class:`NumPackStateError` unless called inside a ``with`` block.
        warn_no_context: as in NumPack 0.7: emit a ``UserWarning`` at construction when
            ``strict_context_mode`` is off (``None``, the default, warns on Windows only).
        force_gc_on_close: run ``gc.collect()`` in :meth:`close` (NumPack 0.7's option).
        durable: sync each change to disk (data, then metadata, then the directory) before
            the method returns, so that it survives power loss. Slower.

    Unlike NumPack 0.7, the directory is opened by the constructor (NumPack opens it at
    :meth:`open` or ``with``; both are no-ops here when it is open), so a missing or
    invalid directory is reported at once.
    """

    def __init__(
        self,
        filename: PathLike,
        drop_if_exists: bool = False,
        strict_context_mode: bool = False,
        warn_no_context: Optional[bool] = None,
        force_gc_on_close: bool = False,
        *,
        durable: bool = False,
    ) -> None:
        self._path = os.fspath(filename)
        self._durable = bool(durable)
        self._strict = bool(strict_context_mode)
        self._force_gc = bool(force_gc_on_close)
        self._in_context = 0
        self._handle: Optional[Handle] = None
        if warn_no_context is None:
            warn_no_context = sys.platform == "win32"
        if warn_no_context and not self._strict:
            warnings.warn(
                f"NumPack instance created for {self._path!r} is not using strict context "
                "mode; use 'with NumPack(...) as npk:' or strict_context_mode=True "
                "(warn_no_context=False silences this)",
                UserWarning,
                stacklevel=2,
            )
        self._open(bool(drop_if_exists))

    # -- opening and closing ---------------------------------------------------------

    def _open(self, drop_if_exists: bool) -> None:
        h = _lib.open_handle(
            lib.npkio_numpack_create, lib.npkio_numpack_free, path_arg(self._path),
            drop_if_exists,
        )
        if self._durable:
            check(lib.npkio_numpack_set_durable(h.ptr, True))
        self._handle = h

    def open(self) -> None:
        """Open again after :meth:`close` (a no-op when open). Never drops the directory."""
        if self._handle is None:
            self._open(False)

    def close(self, force_gc: Optional[bool] = None) -> None:
        """Close. Arrays loaded earlier stay valid: the library's handle is freed when the
        last of them goes. Closing twice is a no-op. ``force_gc`` (default: the
        constructor's ``force_gc_on_close``) runs ``gc.collect()`` afterwards."""
        if self._handle is None:
            return
        self._handle = None
        if force_gc or (force_gc is None and self._force_gc):
            gc.collect()

    @property
    def is_opened(self) -> bool:
        """Whether the directory is open."""
        return self._handle is not None

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called (and no :meth:`open` since)."""
        return self._handle is None

    @property
    def path(self) -> str:
        """The directory."""
        return self._path

    def __enter__(self) -> "NumPack":
        self.open()
        self._in_context += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.close()
        finally:
            self._in_context = max(0, self._in_context - 1)

    def __repr__(self) -> str:
        state = "open" if self._handle is not None else "closed"
        return f"NumPack({self._path!r}, {state})"

    def _h(self) -> Handle:
        if self._handle is None:
            raise NumPackStateError(
                f"NumPack {self._path!r} is not opened or has been closed; call open() or use "
                "a with block"
            )
        if self._strict and not self._in_context:
            raise NumPackStateError(
                f"NumPack {self._path!r} is in strict context mode: call its methods inside "
                "'with NumPack(...) as npk:'"
            )
        return self._handle

    # -- reading ---------------------------------------------------------------------

    def get_member_list(self) -> List[str]:
        """Names of the arrays, sorted."""
        h = self._h()
        with h.lock:
            doc = call_json(lib.npkio_numpack_names_json, h.ptr)
        return json.loads(doc)

    def _info(self, name: str) -> ArrayInfo:
        h = self._h()
        info = ArrayInfo()
        with h.lock:
            check(lib.npkio_numpack_info(h.ptr, name_arg(name, "array_name"), ctypes.byref(info)))
        return info

    def get_shape(self, array_name: str) -> Tuple[int, ...]:
        """The shape of an array (rows after dropped ones); ``KeyError`` if there is none."""
        info = self._info(array_name)
        return tuple(int(info.shape[i]) for i in range(info.ndim))

    def get_dtype(self, array_name: str) -> str:
        """The true dtype of an array, as SafeTensors names it (``"F32"``, ``"BF16"``;
        ``"complex128"``)."""
        return _BY_NUMBER[self._info(array_name).dtype].name

    def has_array(self, array_name: str) -> bool:
        """Whether there is an array of that name."""
        return array_name in self.get_member_list()

    def load(
        self, array_name: str, lazy: bool = False, *, copy: Optional[bool] = None
    ) -> np.ndarray:
        """An array, writable as NumPack returns it.

        By default (``copy=None``) a private, copy-on-write mapping of the array's data
        file, made for this call: zero-copy (pages are read from the file when touched),
        and writable without changing the file or any other array (a page written is
        copied then). An array with dropped rows or in segments is gathered into a
        writable array of its own. ``lazy=True`` (NumPack's memory-mapped ``LazyArray``)
        returns the same: nothing is read until it is indexed, and it supports everything
        an ``ndarray`` does. ``copy=True``: a copy that owns its memory (read now; nothing
        refers to the file afterwards). ``copy=False``: the read-only view the directory
        handle keeps (shared by every such call; no new mapping).

        Raises:
            KeyError: no array of that name.
        """
        h = self._h()
        with h.lock:
            if copy is None:
                return numpack_array(h, array_name)
            v = TensorView()
            check(lib.npkio_numpack_view(h.ptr, name_arg(array_name, "array_name"), ctypes.byref(v)))
            arr = view_to_array(h, v)[1]
        return finish(arr, copy)

    def __getitem__(self, array_name: str) -> np.ndarray:
        return self.load(array_name)

    def __contains__(self, array_name: object) -> bool:
        return isinstance(array_name, str) and self.has_array(array_name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.get_member_list())

    def __len__(self) -> int:
        h = self._h()
        n = c_size_t()
        check(lib.npkio_numpack_count(h.ptr, ctypes.byref(n)))
        return n.value

    # -- changing --------------------------------------------------------------------

    def save(self, arrays: Dict[str, Any]) -> None:
        """Save arrays, replacing any of the same name; all are written or none (one
        commit, even for several arrays).

        Non-contiguous arrays are written in C order; 0-d arrays, bool and complex128
        work; BF16/FP8 as ``ml_dtypes`` arrays or tagged raw bits (see
        :func:`npkio.raw_dtype`). Arrays loaded before keep their old contents.
        """
        h = self._h()
        descs, keep = descriptions(arrays, "arrays")
        with h.lock:
            check(lib.npkio_numpack_save(h.ptr, descs, len(arrays)))
        del keep

    def append(self, arrays: Dict[str, Any]) -> None:
        """Append rows to existing arrays: each value holds whole rows of the array's dtype
        and row shape (``shape[1:]``); a single row may be given without its leading axis.

        Each array's append is all or none; several arrays are appended one after the
        other, so an error (or a crash) can leave the earlier ones appended and the later
        ones not. The arguments are all checked before anything is written.

        Raises:
            KeyError: no array of that name.
            TypeError: a dtype other than the array's.
            ValueError: rows of another shape.
        """
        h = self._h()
        prepared = []
        for name, value in arrays.items():
            info = self._info(name)
            inp = array_input(value, f"arrays[{name!r}]")
            row_shape = tuple(int(info.shape[i]) for i in range(1, info.ndim))
            if inp.number != info.dtype:
                raise TypeError(
                    f"cannot append {_BY_NUMBER[inp.number].name} rows to {name!r}, "
                    f"an array of {_BY_NUMBER[info.dtype].name}"
                )
            if info.ndim == 0:
                raise ValueError(f"cannot append to the 0-d array {name!r}")
            if inp.shape == row_shape:
                count = 1  # one row without its leading axis
            elif inp.shape[1:] != row_shape or len(inp.shape) != info.ndim:
                raise ValueError(
                    f"cannot append rows of shape {inp.shape[1:]} to {name!r}, whose rows "
                    f"have shape {row_shape}"
                )
            else:
                count = inp.shape[0]
            prepared.append((name_arg(name), inp.array, count))
        with h.lock:
            for name_b, arr, count in prepared:
                data = arr.ctypes.data if arr.nbytes else None
                # The row count given: rows of 0 bytes cannot be counted from the bytes.
                check(lib.npkio_numpack_append_rows(h.ptr, name_b, data, arr.nbytes, count))

    def drop(self, array_name: Union[str, Sequence[str]], indexes: Optional[Indexes] = None) -> None:
        """Drop arrays, or rows of an array, as NumPack 0.7 does.

        ``drop(name)`` (or a list of names) marks every row of the array deleted: the name
        stays listed, with shape ``(0,) + row_shape``, and :meth:`save` or :meth:`append`
        fill it again (a 0-d array, which has no rows, is deleted with its file). Names that
        do not exist are skipped silently. ``drop(name, indexes)`` deletes rows: an int, a
        slice, or a sequence of row indices as the array reads now (negative ones count
        from the end); indices out of range are skipped silently, as in NumPack. Rows are
        marked in the deletion bitmap (:meth:`update` compacts the file). Arrays loaded
        before keep their old contents. :meth:`reset` deletes arrays and their files.

        Each array's deletion (or its rows' deletion) is all or none; several names are
        handled one after the other.
        """
        h = self._h()
        names = [array_name] if isinstance(array_name, str) else list(array_name)
        for name in names:
            if not self.has_array(name):
                continue
            if indexes is None:
                if not self.get_shape(name):
                    # A 0-d array has no rows: it is deleted with its file.
                    with h.lock:
                        check(lib.npkio_numpack_delete(h.ptr, name_arg(name, "array_name")))
                    continue
                # Every row, counted in the call that drops them.
                rows, keep = _rows_arg(slice(None), "drop")
            else:
                rows, keep = _rows_arg(indexes, "drop", skip_out_of_range=True)
            # npkio resolves negative indices and slices in the call that drops the rows.
            try:
                with h.lock:
                    check(lib.npkio_numpack_drop_rows_at(h.ptr, name_arg(name), ctypes.byref(rows)))
            except KeyError:
                # Deleted since has_array: nothing left to drop, as for a name not there.
                pass
            del keep

    def _delete(self, names: Sequence[str]) -> None:
        h = self._h()
        with h.lock:
            for name in names:
                check(lib.npkio_numpack_delete(h.ptr, name_arg(name, "array_name")))

    # -- NumPack 0.7's other methods -------------------------------------------------

    def getitem(self, array_name: str, indexes: Indexes, *, copy: bool = False) -> np.ndarray:
        """Rows of an array (NumPack's random access).

        ``indexes``: a slice (any step; negative bounds count from the end) gives a
        zero-copy view of the rows (writable: see :meth:`load`); an int, a list or an
        integer array (negative indices count from the end, as NumPack's documentation
        promises) gives a new array of those rows, in that order. As in NumPack, an int gives one row *with* its
        leading axis (shape ``(1, ...)``). ``copy=True`` gives a writable copy in every case.

        Raises:
            KeyError: no array of that name.
            IndexError: an index out of range.
            TypeError: indices that are not integers (a boolean mask included).
        """
        if isinstance(indexes, slice):
            return finish(self.load(array_name)[indexes], copy)
        rows, keep = _rows_arg([indexes] if _is_int(indexes) else indexes, "getitem")
        h = self._h()
        v = TensorView()
        # npkio resolves the indices against the state it copies the rows from.
        with h.lock:
            check(lib.npkio_numpack_get_rows(
                h.ptr, name_arg(array_name, "array_name"), ctypes.byref(rows), ctypes.byref(v)
            ))
            # A new array, which owns its memory and is writable.
            arr = np.array(view_to_array(h, v)[1], copy=True)
        del keep
        return arr

    def stream_load(
        self, array_name: str, buffer_size: Optional[int] = None, *, copy: bool = False
    ) -> Iterator[np.ndarray]:
        """Iterate over an array in batches of ``buffer_size`` rows (1 when ``None``), as
        NumPack does; the last batch may be shorter. Each batch is a writable zero-copy
        view of the rows (of a private mapping, see :meth:`load`; a copy that owns its
        memory with ``copy=True``). The array is the one this call found: changes made
        while iterating are not seen.

        Raises:
            KeyError: no array of that name (at the call, not at the first batch).
            ValueError: ``buffer_size`` of 0 or less.
        """
        if buffer_size is not None:
            if isinstance(buffer_size, bool) or not _is_int(buffer_size):
                raise TypeError(f"buffer_size must be an int, not {type(buffer_size).__name__}")
            if buffer_size <= 0:
                raise ValueError("buffer_size must be greater than 0")
        step = 1 if buffer_size is None else int(buffer_size)
        arr = self.load(array_name)
        if arr.ndim == 0:
            raise ValueError(f"{array_name!r} is 0-d: it has no rows to stream")

        def batches() -> Iterator[np.ndarray]:
            for start in range(0, arr.shape[0], step):
                yield finish(arr[start : start + step], copy)

        return batches()

    def replace(self, arrays: Dict[str, Any], indexes: Indexes) -> None:
        """Overwrite rows of existing arrays: ``arrays[name]`` holds the new rows (shape
        ``(len(rows),) + row_shape``, or anything that broadcasts to it), ``indexes`` the
        rows (an int, a list, an integer array or a slice; negative ones count from the
        end), as in NumPack. Rows keep their place; dropped rows stay dropped.

        The array is rewritten whole (a new data file, published as :meth:`save` publishes
        it): all arrays are written or none, and arrays loaded before keep their old
        contents.

        Raises:
            KeyError: no array of that name.
            TypeError: values of another dtype than the array's.
            ValueError: values whose shape does not fit the rows.
            IndexError: an index out of range.
        """
        if not isinstance(arrays, dict):
            raise ValueError("arrays must be a dictionary")
        if not isinstance(indexes, (int, np.integer, list, tuple, np.ndarray, slice)):
            raise ValueError(
                "The indexes must be int or list or numpy.ndarray or slice, not "
                f"{type(indexes).__name__}"
            )
        rows, keep = _rows_arg([indexes] if _is_int(indexes) else indexes, "replace")
        values: Dict[str, np.ndarray] = {}
        for name, value in arrays.items():
            info = self._info(name)
            if info.ndim == 0:
                raise ValueError(f"{name!r} is 0-d: it has no rows to replace")
            inp = array_input(value, f"arrays[{name!r}]")
            if inp.number != info.dtype:
                raise TypeError(
                    f"cannot write {_BY_NUMBER[inp.number].name} rows into {name!r}, an array "
                    f"of {_BY_NUMBER[info.dtype].name}"
                )
            row_shape = tuple(int(info.shape[i]) for i in range(1, info.ndim))
            arr = inp.array
            try:
                # One row (written to every row named) or rows: broadcast within a row.
                if arr.ndim <= len(row_shape):
                    arr = np.broadcast_to(arr, row_shape)
                elif arr.shape[1:] != row_shape:
                    arr = np.broadcast_to(arr, arr.shape[:1] + row_shape)
            except ValueError as e:
                raise ValueError(
                    f"cannot write values of shape {inp.array.shape} into rows of {name!r}, "
                    f"whose rows have shape {row_shape}: {e}"
                ) from None
            values[name] = np.ascontiguousarray(arr)
        if not values:
            return
        h = self._h()
        descs, keep_descs = descriptions(values, "arrays")
        # npkio resolves the indices against the state it rewrites: all arrays in one commit.
        with h.lock:
            check(lib.npkio_numpack_replace_rows(h.ptr, descs, len(values), ctypes.byref(rows)))
        del keep, keep_descs

    def clone(self, source_name: str, target_name: str) -> None:
        """Copy an array to a new name; the copy is independent of the source.

        Raises:
            KeyError: no array ``source_name``.
            ValueError: ``target_name`` exists already (as in NumPack).
        """
        self._info(source_name)  # KeyError when there is none
        if self.has_array(target_name):
            raise ValueError(
                f"Target array {target_name!r} already exists; drop it first or choose "
                "another name"
            )
        self.save({target_name: self.load(source_name)})

    def update(self, array_name: str) -> None:
        """Compact an array: rewrite it without its dropped rows (and as one file if it was
        in segments), so that it no longer needs a deletion bitmap, as NumPack's ``update``
        does. A no-op when there is nothing to compact. The contents are unchanged;
        arrays loaded before stay valid.

        Raises:
            KeyError: no array of that name.
        """
        info = self._info(array_name)
        if info.deleted_rows == 0 and not info.segmented:
            return
        self.save({array_name: self.load(array_name)})

    def reset(self) -> None:
        """Delete every array (NumPack's ``reset``); the directory stays, empty."""
        names = self.get_member_list()
        if names:
            self._delete(names)

    def _records(self) -> Dict[str, Any]:
        h = self._h()
        with h.lock:
            doc = call_json(lib.npkio_numpack_records_json, h.ptr)
        return json.loads(doc)

    def get_metadata(self) -> Dict[str, Any]:
        """The directory's metadata as NumPack 0.7 reports it::

            {'arrays': {name: {'shape': [...], 'data_file': 'data_x.npkd',
                               'last_modified': 1700000000000000, 'size_bytes': n,
                               'dtype': 'Float32'}, ...},
             'base_dir': '...', 'total_arrays': n}

        ``shape`` and ``size_bytes`` are the stored ones (dropped rows included, as in the
        metadata file; :meth:`get_shape` gives the rows that remain); ``last_modified`` is
        in microseconds since the epoch; ``dtype`` is NumPack's name of its dtype code.
        """
        records = self._records()
        arrays = {
            name: {
                "shape": r["shape"],
                "data_file": r["data_file"],
                "last_modified": r["last_modified"],
                "size_bytes": r["size_bytes"],
                "dtype": _numpack_dtype_name(r["dtype_code"]),
            }
            for name, r in records["arrays"].items()
        }
        return {"arrays": arrays, "base_dir": records["base_dir"], "total_arrays": len(arrays)}

    def get_modify_time(self, array_name: str) -> Optional[int]:
        """When an array was last written, in microseconds since the epoch (the metadata's
        ``last_modified``); ``None`` when there is no such array, as in NumPack."""
        r = self._records()["arrays"].get(array_name)
        return None if r is None else int(r["last_modified"])

    def get_io_stats(self) -> Dict[str, Any]:
        """NumPack 0.7's I/O statistics, which it does not collect either."""
        return {"stats_available": False}


def _rows_arg(
    indexes: Indexes, what: str, skip_out_of_range: bool = False
) -> "Tuple[Rows, List[Any]]":
    """``NpkioRows`` for row indices (negative ones count from the end) or a slice, and the
    objects to keep alive while C reads them. With ``skip_out_of_range``, indices that name
    no row are skipped by npkio instead of refused."""
    rows = Rows()
    rows.skip_out_of_range = 1 if skip_out_of_range else 0
    if isinstance(indexes, slice):
        rows.is_slice = 1
        for bound in ("start", "stop"):
            b = getattr(indexes, bound)
            if b is not None:
                setattr(rows, "has_" + bound, 1)
                setattr(rows, bound, operator.index(b))
        rows.step = 1 if indexes.step is None else operator.index(indexes.step)
        return rows, []
    idx = np.asarray(indexes)
    if idx.dtype == bool:
        raise TypeError(f"{what} takes row indices, not a boolean mask")
    if idx.size and idx.dtype.kind not in "iu":
        raise TypeError(f"row indices must be integers, not {idx.dtype}")
    if idx.dtype.kind == "u" and idx.size and int(idx.max()) > np.iinfo(np.int64).max:
        raise IndexError(f"row index {int(idx.max())} is out of range")
    flat = np.ascontiguousarray(idx.reshape(-1), dtype=np.int64)
    rows.indices = flat.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
    rows.count = flat.size
    return rows, [flat]


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _numpack_dtype_name(code: int) -> str:
    return _NUMPACK_DTYPE_NAMES[code] if 0 <= code < len(_NUMPACK_DTYPE_NAMES) else f"code {code}"

