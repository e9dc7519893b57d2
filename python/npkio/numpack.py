"""``NumPack``: a NumPack directory, as a conversion pipeline uses it::

    with NumPack('model.npk') as npk:
        weight = npk.load('encoder.weight')
        npk.save({'encoder.weight': quantize(weight)})
"""

from __future__ import annotations

import ctypes
import os
from ctypes import c_size_t, c_uint64, c_void_p
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _lib
from ._dtypes import _BY_NUMBER, array_input, view_to_array
from ._lib import ArrayInfo, Handle, TensorView, check, lib, name_arg, path_arg, take_str
from .io import descriptions

__all__ = ["NumPack"]

PathLike = Union[str, "os.PathLike[str]"]
Indexes = Union[int, slice, Sequence[int], np.ndarray]


class NumPack:
    """A NumPack directory (NumPack 0.7's on-disk format), opened for reading and changing.

    ``NumPack(path)`` opens the directory, creating an empty one if there is none; with
    ``drop_if_exists=True`` an existing NumPack directory is emptied first, all or none (only
    on this first opening, not on a later :meth:`open`; files npkio does not know stay). A path that exists but is not a NumPack
    directory is never removed: that raises an error. Use it as a context manager, or call
    :meth:`close` when done.

    Arrays from :meth:`load` are read-only zero-copy views of the data files where
    possible. Each keeps the directory handle it came from alive, so it stays valid after
    :meth:`close`, after the ``NumPack`` object is gone, and after the array is replaced,
    appended to or dropped through this object (it keeps showing the bytes it was loaded
    with). Every change is on disk when its method returns.

    Each change (one :meth:`save`, one array's :meth:`append` or :meth:`drop`) is all or
    none: if the process is killed or a write fails at any point, the directory reads as
    before the change or as after it, here and in NumPack 0.7 (one exception for NumPack
    0.7 alone: just before replacing an array that has dropped rows, it shows that
    array's dropped rows again; see docs/guarantees.md). A failed change raises and leaves this object describing the
    directory as before. A change holds the lock conversions into the directory hold, and
    raises :class:`FileNotFoundError` (``NpkioFileNotFoundError``) if a conversion
    replaced the directory since it was opened, or :class:`BlockingIOError`
    (``NpkioBusyError``) if another writer changed it since; reopen it then.

    Methods may be called from several threads; calls on one object run one at a time.

    Args:
        filename: the directory.
        drop_if_exists: remove an existing NumPack directory first.
        durable: sync each change to disk (data, then metadata, then the directory) before
            the method returns, so that it survives power loss. Slower.
    """

    def __init__(
        self, filename: PathLike, drop_if_exists: bool = False, *, durable: bool = False
    ) -> None:
        self._path = os.fspath(filename)
        self._durable = bool(durable)
        self._handle: Optional[Handle] = None
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

    def close(self) -> None:
        """Close. Arrays loaded earlier stay valid: the library's handle is freed when the
        last of them goes. Closing twice is a no-op."""
        self._handle = None

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
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._handle is not None else "closed"
        return f"NumPack({self._path!r}, {state})"

    def _h(self) -> Handle:
        if self._handle is None:
            raise ValueError(f"NumPack {self._path!r} is closed")
        return self._handle

    # -- reading ---------------------------------------------------------------------

    def get_member_list(self) -> List[str]:
        """Names of the arrays, sorted."""
        h = self._h()
        n, p, ln = c_size_t(), c_void_p(), c_size_t()
        with h.lock:
            check(lib.npkio_numpack_count(h.ptr, ctypes.byref(n)))
            names = []
            for i in range(n.value):
                check(lib.npkio_numpack_name(h.ptr, i, ctypes.byref(p), ctypes.byref(ln)))
                names.append(take_str(p.value, ln.value))
        return names

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

    def load(self, array_name: str, lazy: bool = False) -> np.ndarray:
        """An array as a read-only NumPy array.

        Zero-copy (a view of the mapped data file) when the array is one file with no
        dropped rows; otherwise its active rows are gathered once into memory the handle
        keeps. ``lazy`` is accepted for compatibility with NumPack and changes nothing: the
        array is always mapped, not read. Use ``.copy()`` for a writable array.

        Raises:
            KeyError: no array of that name.
        """
        h = self._h()
        v = TensorView()
        with h.lock:
            check(lib.npkio_numpack_view(h.ptr, name_arg(array_name, "array_name"), ctypes.byref(v)))
            return view_to_array(h, v)[1]

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
                pass  # one row without its leading axis
            elif inp.shape[1:] != row_shape or len(inp.shape) != info.ndim:
                raise ValueError(
                    f"cannot append rows of shape {inp.shape[1:]} to {name!r}, whose rows "
                    f"have shape {row_shape}"
                )
            prepared.append((name_arg(name), inp.array))
        with h.lock:
            for name_b, arr in prepared:
                data = arr.ctypes.data if arr.nbytes else None
                check(lib.npkio_numpack_append(h.ptr, name_b, data, arr.nbytes))

    def drop(self, array_name: Union[str, Sequence[str]], indexes: Optional[Indexes] = None) -> None:
        """Delete arrays, or rows of an array.

        ``drop(name)`` (or a list of names) deletes whole arrays and their files.
        ``drop(name, indexes)`` deletes rows: an int, a slice, or a sequence of row indices
        as the array reads now (negative ones count from the end), marked in the deletion
        bitmap as NumPack does. Arrays loaded before keep their old contents.

        Each array's deletion (or its rows' deletion) is all or none; several names are
        handled one after the other.
        """
        h = self._h()
        names = [array_name] if isinstance(array_name, str) else list(array_name)
        if indexes is None:
            with h.lock:
                for name in names:
                    check(lib.npkio_numpack_delete(h.ptr, name_arg(name, "array_name")))
            return
        for name in names:
            rows = self._rows(name, indexes)
            buf = (c_uint64 * max(len(rows), 1))(*rows)
            with h.lock:
                check(lib.npkio_numpack_drop_rows(h.ptr, name_arg(name), buf, len(rows)))

    def _rows(self, name: str, indexes: Indexes) -> List[int]:
        shape = self.get_shape(name)
        if not shape:
            raise ValueError(f"{name!r} is 0-d: it has no rows to drop")
        n = shape[0]
        if isinstance(indexes, slice):
            return list(range(*indexes.indices(n)))
        idx = np.asarray(indexes)
        if idx.dtype == bool:
            raise TypeError("drop takes row indices, not a boolean mask")
        if idx.size and idx.dtype.kind not in "iu":
            raise TypeError(f"row indices must be integers, not {idx.dtype}")
        rows = []
        for i in idx.reshape(-1).tolist():
            j = i + n if i < 0 else i
            if not 0 <= j < n:
                raise IndexError(f"row {i} is out of range for {name!r} with {n} rows")
            rows.append(j)
        return rows
