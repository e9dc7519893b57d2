"""Dtypes between npkio and NumPy, and tensors between C views and NumPy arrays.

The dtype table comes from the library itself (``npkio_dtype_name``,
``npkio_dtype_numpy_name``, ``npkio_dtype_bits``), so it cannot drift from the Rust core.

Dtypes NumPy lacks
------------------

* **BF16 and the FP8 kinds** come back as arrays of the ``ml_dtypes`` type (``bfloat16``,
  ``float8_e4m3fn``, ...); ``ml_dtypes`` is a dependency of the package. Without it,
  reading such a tensor raises ``ImportError`` rather than hand back integers that look
  like weights. Only when asked (``NPKIO_NO_ML_DTYPES=1``) do they come back as *raw*
  arrays of the unsigned integer of the same width (``uint16`` for BF16, ``uint8`` for
  FP8), tagged with their true dtype as below.
* **F4 and the F6 kinds** (4 and 6 bits an element, packed) always come back raw: as
  ``uint8`` arrays of the packed bytes, with the last dimension counted in bytes when it
  holds whole bytes and the flat byte count otherwise (the layout npkio stores them with in
  NumPack). ``ml_dtypes``' ``float4_e2m1fn``/``float6_*`` hold one element per byte, so
  turning packed bytes into them would be a copy, and the SafeTensors format does not fix
  the order of elements within a byte.

A raw array states its true dtype in its dtype's metadata::

    arr.dtype.metadata == {"npkio_dtype": "BF16"}
    arr.dtype.metadata == {"npkio_dtype": "F4", "npkio_shape": (2, 6)}   # logical shape

and :func:`npkio.dtype_of` reads it. Setting ``NPKIO_NO_ML_DTYPES=1`` in the environment
makes npkio return raw arrays even when ``ml_dtypes`` is installed.

On the way in, npkio accepts arrays of the ``ml_dtypes`` types, raw arrays tagged as above
(:func:`npkio.raw_dtype` makes the tagged dtype for bits you hold), and every NumPy dtype
the formats have (bool, int8 to uint64, float16/32/64, complex64, and complex128 for
NumPack only).
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ._lib import TensorView, lib, take_str

__all__ = ["dtype_of", "raw_dtype", "use_ml_dtypes", "DTYPE_NAMES"]


class _Row(NamedTuple):
    number: int
    name: str  # SafeTensors name, "complex128" for C128
    numpy_name: str
    bits: int


def _table() -> Dict[int, _Row]:
    rows = {}
    for n in range(256):
        name = lib.npkio_dtype_name(n)
        if name is None:
            continue
        rows[n] = _Row(
            n,
            name.decode("ascii"),
            lib.npkio_dtype_numpy_name(n).decode("ascii"),
            int(lib.npkio_dtype_bits(n)),
        )
    return rows


_BY_NUMBER = _table()
_BY_NAME = {r.name: r for r in _BY_NUMBER.values()}
_BY_NUMPY_NAME = {r.numpy_name: r for r in _BY_NUMBER.values()}
_NATIVE = {
    "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
}

#: Every dtype name npkio knows (SafeTensors spelling, plus ``complex128``).
DTYPE_NAMES: Tuple[str, ...] = tuple(r.name for r in sorted(_BY_NUMBER.values()))


def use_ml_dtypes() -> bool:
    """Whether arrays of dtypes NumPy lacks come back as ``ml_dtypes`` types.

    True when ``ml_dtypes`` is importable and ``NPKIO_NO_ML_DTYPES`` is unset, empty or
    ``0``. Read at each call, so it can be switched while running.
    """
    if os.environ.get("NPKIO_NO_ML_DTYPES", "") not in ("", "0"):
        return False
    return _ml_dtypes() is not None


def _ml_dtypes() -> Any:
    try:
        import ml_dtypes  # noqa: PLC0415
    except ImportError:
        return None
    return ml_dtypes


def _raw_numpy(row: _Row) -> np.dtype:
    return np.dtype({8: np.uint8, 16: np.uint16}.get(row.bits, np.uint8)).newbyteorder("<")


def raw_dtype(dtype: str, shape: Optional[Sequence[int]] = None) -> np.dtype:
    """The tagged unsigned dtype npkio uses for raw bits of ``dtype`` (a SafeTensors name).

    ``raw_dtype("BF16")`` is ``uint16`` with metadata ``{"npkio_dtype": "BF16"}``: view
    bfloat16 bits you hold with it (``bits.view(npkio.raw_dtype("BF16"))``) to save them as
    BF16 without ``ml_dtypes``. For the packed F4/F6 kinds give the logical ``shape`` too.
    """
    row = _BY_NAME.get(dtype)
    if row is None:
        raise ValueError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPE_NAMES)})")
    md: Dict[str, Any] = {"npkio_dtype": row.name}
    if shape is not None:
        md["npkio_shape"] = tuple(int(d) for d in shape)
    return np.dtype(_raw_numpy(row), metadata=md)


def _numpy_dtype(row: _Row) -> Optional[np.dtype]:
    """The NumPy dtype an array of this dtype comes back as, ``None`` for a raw one.

    BF16 and FP8 are never returned under a plain integer dtype by default: without
    ``ml_dtypes`` (a dependency of the package) this raises ``ImportError``, unless raw
    arrays were asked for with ``NPKIO_NO_ML_DTYPES=1``.
    """
    if row.numpy_name in _NATIVE:
        return np.dtype(row.numpy_name).newbyteorder("<")
    if row.bits % 8 or os.environ.get("NPKIO_NO_ML_DTYPES", "") not in ("", "0"):
        return None
    ml = _ml_dtypes()
    t = getattr(ml, row.numpy_name, None) if ml is not None else None
    if t is None:
        why = "is not installed" if ml is None else f"{ml.__version__} lacks {row.numpy_name}"
        raise ImportError(
            f"npkio returns {row.name} tensors as ml_dtypes.{row.numpy_name} arrays, but "
            f"ml_dtypes {why}: install or upgrade it (pip install -U ml_dtypes), or set "
            f"NPKIO_NO_ML_DTYPES=1 to get the raw bits as tagged unsigned arrays"
        )
    return np.dtype(t)


def dtype_of(array: Any) -> str:
    """The SafeTensors name of an array's true dtype (``"F32"``, ``"BF16"``, ``"F4"``).

    Reads the tag of raw arrays; ``"complex128"`` for complex128. Raises ``TypeError`` for
    a dtype npkio cannot store.
    """
    return _row_of(np.asarray(array).dtype).name


def _row_of(dt: np.dtype) -> _Row:
    md = dt.metadata
    if md and "npkio_dtype" in md:
        row = _BY_NAME.get(md["npkio_dtype"])
        if row is None:
            raise TypeError(f"unknown npkio_dtype {md['npkio_dtype']!r} in a dtype's metadata")
        if row.bits % 8 == 0 and row.bits != dt.itemsize * 8:
            raise TypeError(f"{dt} cannot hold raw {row.name} bits ({row.bits} bits each)")
        return row
    row = _BY_NUMPY_NAME.get("bool" if dt.kind == "b" else dt.name)
    if row is None:
        raise TypeError(
            f"npkio cannot store arrays of dtype {dt} (supported: bool, int8..uint64, "
            "float16/32/64, complex64, complex128, the ml_dtypes types bfloat16 and "
            "float8_*, and raw bits tagged with npkio.raw_dtype)"
        )
    if row.bits % 8 or row.bits != dt.itemsize * 8:
        raise TypeError(
            f"{dt} holds one {row.name} element per {dt.itemsize} byte(s), but npkio stores "
            f"{row.name} packed ({row.bits} bits an element); pass the packed bytes as uint8 "
            f"viewed with npkio.raw_dtype({row.name!r}, shape)"
        )
    return row


# ----------------------------------------------------------------------------------------
# C view -> NumPy array


class _Buffer:
    """Exposes ``nbytes`` of borrowed memory to NumPy and keeps its owner alive.

    ``np.asarray`` on it gives a read-only ``uint8`` array whose ``.base`` is this object;
    every view NumPy derives from that array keeps this object, and so ``owner`` (the
    :class:`npkio._lib.Handle` the memory belongs to), alive.
    """

    __slots__ = ("__array_interface__", "owner")

    def __init__(self, owner: object, ptr: int, nbytes: int) -> None:
        self.owner = owner
        self.__array_interface__ = {
            "version": 3,
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (ptr, True),  # read-only: the mapping is not to be written through
        }


def _sub_byte_raw_shape(shape: Tuple[int, ...], bits: int, nbytes: int) -> Tuple[int, ...]:
    if shape and (shape[-1] * bits) % 8 == 0:
        return shape[:-1] + ((shape[-1] * bits) // 8,)
    return (nbytes,)


def view_to_array(owner: object, v: TensorView) -> "Tuple[str, np.ndarray]":
    """``(name, array)`` for a view whose memory belongs to ``owner``'s handle.

    Zero-copy: the array reads the handle's memory and references ``owner`` from its
    ``.base`` chain. Arrays are read-only.
    """
    name = take_str(v.name, v.name_len)
    shape = tuple(int(v.shape[i]) for i in range(v.ndim))
    row = _BY_NUMBER.get(v.dtype)
    if row is None:
        raise RuntimeError(f"npkio returned unknown dtype number {v.dtype}")
    flat = np.asarray(_Buffer(owner, v.data, v.nbytes)) if v.nbytes else None
    return name, bytes_to_array(flat, row, shape, v.nbytes)


def bytes_to_array(
    flat: Optional[np.ndarray], row: _Row, shape: Tuple[int, ...], nbytes: int
) -> np.ndarray:
    """The array of dtype ``row`` and logical ``shape`` over ``flat``, a 1-d ``uint8`` array
    of exactly ``nbytes`` bytes (``None`` when there are none). A view, not a copy."""
    dt = _numpy_dtype(row)
    if dt is None:
        if row.bits % 8:
            dt = raw_dtype(row.name, shape)
            shape = _sub_byte_raw_shape(shape, row.bits, nbytes)
        else:
            dt = raw_dtype(row.name)
    if flat is None or nbytes == 0:
        arr = np.empty(shape, dtype=dt)
        arr.flags.writeable = False
        return arr
    return flat.view(dt).reshape(shape)


def table_arrays(
    owner: object, table: Dict[str, Any], bases: Optional[List[Any]] = None
) -> Iterator["Tuple[str, np.ndarray]"]:
    """``(name, array)`` for each tensor of a table of views, as
    ``npkio_safetensors_iter_table_json`` gives it (its memory belongs to ``owner``'s
    handle).

    Zero-copy and read-only as :func:`view_to_array`. Each region is wrapped once, each
    kind (dtype, shape) resolved once, and every array is one ``ndarray`` over its region,
    so that the cost per tensor is one small NumPy call. With ``bases`` (one writable
    ``uint8`` array per region, holding the region's bytes) the arrays are views of those
    instead, and writable, empty ones included.
    """
    writable = bases is not None
    if bases is None:
        bases = [
            np.asarray(_Buffer(owner, addr, n)) if n else None for addr, n in table["regions"]
        ]
    # Per kind: (dtype, shape, nbytes) for a plain view, or (None, row, shape, nbytes).
    kinds: List[Tuple[Any, ...]] = []
    for number, shape, nbytes in table["kinds"]:
        row = _BY_NUMBER.get(number)
        if row is None:
            raise RuntimeError(f"npkio returned unknown dtype number {number}")
        dt = _numpy_dtype(row)
        if dt is None and row.bits % 8 == 0:
            dt = raw_dtype(row.name)
        if dt is not None and nbytes:
            kinds.append((dt, tuple(shape), nbytes))
        else:
            kinds.append((None, row, tuple(shape), nbytes))
    ndarray = np.ndarray
    for name, k, region, offset in zip(
        table["names"], table["kind"], table["region"], table["offset"]
    ):
        kind = kinds[k]
        dt = kind[0]
        if dt is not None:
            yield name, ndarray(kind[1], dt, bases[region], offset)
        else:
            _, row, shape, nbytes = kind
            flat = bases[region][offset : offset + nbytes] if nbytes else None
            arr = bytes_to_array(flat, row, shape, nbytes)
            yield name, (finish(arr, True) if writable and not nbytes else arr)


def row_by_name(name: str) -> _Row:
    """The dtype of a SafeTensors name (``"F32"``)."""
    row = _BY_NAME.get(name)
    if row is None:
        raise ValueError(f"unknown dtype {name!r}")
    return row


def finish(arr: np.ndarray, copy: bool) -> np.ndarray:
    """What a reading function returns: ``arr`` itself (a read-only view), or with
    ``copy=True`` a writable copy that owns its memory (same dtype, tags included)."""
    if not copy:
        return arr
    out = np.empty(arr.shape, dtype=arr.dtype)
    out[...] = arr
    return out


# ----------------------------------------------------------------------------------------
# NumPy array -> C description


class Input(NamedTuple):
    """An array ready to hand to C: ``array`` must stay referenced during the call."""

    number: int
    shape: Tuple[int, ...]
    array: np.ndarray  # C-contiguous, little-endian


def array_input(value: Any, what: str) -> Input:
    """Check and prepare one array for the C ABI: true dtype, logical shape, C-contiguous
    little-endian bytes (a copy only when the array is not already that)."""
    arr = np.asarray(value)
    try:
        row = _row_of(arr.dtype)
    except TypeError as e:
        raise TypeError(f"{what}: {e}") from None
    shape: Tuple[int, ...] = tuple(int(d) for d in arr.shape)
    if row.bits % 8:
        shape = _packed_logical_shape(arr, row, what)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and np.little_endian is False):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")
    return Input(row.number, shape, arr)


def _packed_logical_shape(arr: np.ndarray, row: _Row, what: str) -> Tuple[int, ...]:
    if arr.dtype.itemsize != 1:
        raise TypeError(f"{what}: packed {row.name} bits must be a uint8 array")
    md = arr.dtype.metadata or {}
    logical = md.get("npkio_shape")
    if logical is not None and math.prod(logical) * row.bits == arr.size * 8:
        return tuple(int(d) for d in logical)
    if arr.ndim >= 1 and (arr.shape[-1] * 8) % row.bits == 0:
        return tuple(int(d) for d in arr.shape[:-1]) + (arr.shape[-1] * 8 // row.bits,)
    raise ValueError(
        f"{what}: cannot tell the logical shape of {arr.size} packed {row.name} bytes of shape "
        f"{arr.shape}; view them with npkio.raw_dtype({row.name!r}, shape)"
    )
