"""Loading ``libnpkio`` and declaring the C ABI of ``include/npkio.h`` for :mod:`ctypes`.

The shared library is looked for, in order:

1. the path in the ``NPKIO_LIBRARY`` environment variable (and only there, when it is set);
2. the copy installed inside this package (``npkio/libnpkio*.so``: setuptools-rust names it
   like an extension module, ``libnpkio.cpython-311-x86_64-linux-gnu.so``) by the wheel or
   ``pip install ./python``;
3. for development from a checkout: ``$CARGO_TARGET_DIR`` or ``<repo>/target``, ``release``
   then ``debug``.

Everything here is private; the public API is in :mod:`npkio.io` and :mod:`npkio.numpack`.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from ctypes import POINTER, c_bool, c_char_p, c_size_t, c_uint32, c_uint64, c_void_p
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from ._errors import error_for_status

__all__ = [
    "lib", "library_path", "check", "Handle", "TensorView", "TensorDesc", "ArrayInfo",
    "LoadOptions", "LoadRequest", "LoadReport",
]

if sys.platform == "darwin":
    _LIB_NAME, _SUFFIX = "libnpkio.dylib", ".dylib"
elif sys.platform == "win32":
    _LIB_NAME, _SUFFIX = "npkio.dll", ".dll"
else:
    _LIB_NAME, _SUFFIX = "libnpkio.so", ".so"


def _candidates() -> List[Path]:
    env = os.environ.get("NPKIO_LIBRARY")
    if env:
        return [Path(env)]
    here = Path(__file__).resolve().parent
    # The installed copy: ``libnpkio.so`` or the name setuptools-rust gives it (the
    # interpreter's extension suffix, or ``.pyd`` on Windows).
    found = sorted(p for p in here.glob("*npkio*") if p.suffix in (_SUFFIX, ".pyd"))
    found = found or [here / _LIB_NAME]
    repo = here.parent.parent
    if (repo / "Cargo.toml").is_file():
        target = Path(os.environ.get("CARGO_TARGET_DIR") or repo / "target")
        if not target.is_absolute():
            target = repo / target
        found += [target / "release" / _LIB_NAME, target / "debug" / _LIB_NAME]
    return found


def _load() -> "tuple[ctypes.CDLL, Path]":
    tried = []
    for path in _candidates():
        if path.is_file():
            return ctypes.CDLL(str(path)), path
        tried.append(str(path))
    raise ImportError(
        "npkio: cannot find the shared library (tried: "
        + ", ".join(tried)
        + "). Install the package with `pip install ./python`, or set NPKIO_LIBRARY to "
        "the path of libnpkio built by `cargo build --release`."
    )


lib, _path = _load()


def library_path() -> Path:
    """The path of the ``libnpkio`` shared library this package loaded."""
    return _path


# ----------------------------------------------------------------------------------------
# Structs (include/npkio.h)


class TensorView(ctypes.Structure):
    """``NpkioTensorView``: a borrowed view; its pointers belong to the handle that filled it."""

    _fields_ = [
        ("name", c_void_p),
        ("name_len", c_size_t),
        ("dtype", c_uint32),
        ("ndim", c_size_t),
        ("shape", POINTER(c_uint64)),
        ("data", c_void_p),
        ("nbytes", c_size_t),
    ]


class TensorDesc(ctypes.Structure):
    """``NpkioTensorDesc``: a tensor handed to npkio, read during the call only."""

    _fields_ = [
        ("name", c_char_p),
        ("dtype", c_uint32),
        ("ndim", c_size_t),
        ("shape", POINTER(c_uint64)),
        ("data", c_void_p),
        ("nbytes", c_size_t),
    ]


class Rows(ctypes.Structure):
    """``NpkioRows``: rows of an array, by index (negative ones count from the end) or by
    slice, resolved by npkio in the call that acts on them."""

    _fields_ = [
        ("indices", POINTER(ctypes.c_int64)),
        ("count", c_size_t),
        ("is_slice", ctypes.c_uint8),
        ("has_start", ctypes.c_uint8),
        ("has_stop", ctypes.c_uint8),
        ("start", ctypes.c_int64),
        ("stop", ctypes.c_int64),
        ("step", ctypes.c_int64),
        ("skip_out_of_range", ctypes.c_uint8),
    ]


class ArrayInfo(ctypes.Structure):
    """``NpkioArrayInfo``: what ``npkio_numpack_info`` says about an array."""

    _fields_ = [
        ("name", c_void_p),
        ("name_len", c_size_t),
        ("dtype", c_uint32),
        ("ndim", c_size_t),
        ("shape", POINTER(c_uint64)),
        ("nbytes", c_uint64),
        ("storage_dtype", c_uint32),
        ("storage_ndim", c_size_t),
        ("storage_shape", POINTER(c_uint64)),
        ("deleted_rows", c_uint64),
        ("segmented", c_bool),
        ("zero_copy", c_bool),
    ]


# ----------------------------------------------------------------------------------------
# Prototypes. Every status is a uint32 checked by `check`.

_status = c_uint32
_pp = POINTER(c_char_p)  # const char *const *
_handle = c_void_p
_out_handle = POINTER(c_void_p)
_out_str = POINTER(c_void_p)


def _proto(name: str, restype, *argtypes) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


_proto("npkio_version", c_char_p)
_proto("npkio_last_error_message", c_char_p)
_proto("npkio_parse_size", _status, c_char_p, POINTER(c_uint64))
_proto("npkio_last_error_status", _status)
_proto("npkio_status_name", c_char_p, c_uint32)
_proto("npkio_dtype_name", c_char_p, c_uint32)
_proto("npkio_dtype_numpy_name", c_char_p, c_uint32)
_proto("npkio_dtype_bits", c_uint32, c_uint32)

_proto(
    "npkio_from_safetensors_file",
    _status, c_char_p, c_char_p, _pp, c_size_t, c_bool, c_size_t, c_size_t, c_uint32,
)
_proto(
    "npkio_to_safetensors_file",
    _status, c_char_p, c_char_p, _pp, c_size_t, _pp, _pp, c_size_t, c_size_t, c_size_t, c_uint32,
)
_proto(
    "npkio_to_safetensors_file_sharded",
    _status, c_char_p, c_char_p, _pp, c_size_t, _pp, _pp, c_size_t, c_uint64, c_size_t,
    c_size_t, c_uint32,
)
_proto(
    "npkio_from_safetensors",
    _status, POINTER(TensorDesc), c_size_t, c_char_p, c_bool, c_size_t, c_size_t, c_uint32,
)

_proto("npkio_safetensors_open", _status, c_char_p, _out_handle)
_proto("npkio_safetensors_free", None, _handle)
_proto("npkio_safetensors_count", _status, _handle, POINTER(c_size_t))
_proto("npkio_safetensors_get", _status, _handle, c_size_t, POINTER(TensorView))
_proto("npkio_safetensors_data_offsets", _status, _handle, c_size_t, POINTER(c_uint64),
       POINTER(c_uint64))
_proto("npkio_safetensors_has_metadata", _status, _handle, POINTER(c_bool))
_proto("npkio_safetensors_metadata_count", _status, _handle, POINTER(c_size_t))
_proto("npkio_safetensors_metadata_get", _status, _handle, c_size_t, _out_str,
       POINTER(c_size_t), _out_str, POINTER(c_size_t))
_proto("npkio_safetensors_iter_open", _status, c_char_p, _pp, c_size_t, _out_handle)
_proto("npkio_safetensors_iter_next", _status, _handle, POINTER(TensorView), POINTER(c_bool))
_proto("npkio_safetensors_iter_free", None, _handle)
_proto("npkio_safetensors_iter_table_json", _status, _handle, c_void_p, c_size_t,
       POINTER(c_size_t))

_proto("npkio_to_safetensors", _status, c_char_p, _pp, c_size_t, _out_handle)
_proto("npkio_tensors_free", None, _handle)
_proto("npkio_tensors_count", _status, _handle, POINTER(c_size_t))
_proto("npkio_tensors_get", _status, _handle, c_size_t, POINTER(TensorView))

_proto(
    "npkio_save_safetensors_file",
    _status, POINTER(TensorDesc), c_size_t, _pp, _pp, c_size_t, c_char_p, c_uint32,
)
_proto(
    "npkio_safetensors_header",
    _status, POINTER(TensorDesc), c_size_t, _pp, _pp, c_size_t, c_void_p, c_size_t,
    POINTER(c_size_t), POINTER(c_size_t),
)
_proto("npkio_safetensors_metadata_json", _status, c_char_p, c_void_p, c_size_t,
       POINTER(c_size_t))
_proto("npkio_json_take", _status, c_void_p, c_size_t, POINTER(c_size_t))
_proto("npkio_safetensors_bytes_json", _status, c_void_p, c_size_t, c_void_p, c_size_t,
       POINTER(c_size_t))

_proto("npkio_numpack_open", _status, c_char_p, _out_handle)
_proto("npkio_numpack_create", _status, c_char_p, c_bool, _out_handle)
_proto("npkio_numpack_free", None, _handle)
_proto("npkio_numpack_set_durable", _status, _handle, c_bool)
_proto("npkio_numpack_count", _status, _handle, POINTER(c_size_t))
_proto("npkio_numpack_name", _status, _handle, c_size_t, _out_str, POINTER(c_size_t))
_proto("npkio_numpack_info", _status, _handle, c_char_p, POINTER(ArrayInfo))
_proto("npkio_numpack_view", _status, _handle, c_char_p, POINTER(TensorView))
_proto("npkio_numpack_save", _status, _handle, POINTER(TensorDesc), c_size_t)
_proto("npkio_numpack_append", _status, _handle, c_char_p, c_void_p, c_size_t)
_proto("npkio_numpack_append_rows", _status, _handle, c_char_p, c_void_p, c_size_t, c_uint64)
_proto("npkio_numpack_drop_rows", _status, _handle, c_char_p, POINTER(c_uint64), c_size_t)
_proto("npkio_numpack_delete", _status, _handle, c_char_p)
_proto("npkio_numpack_get_rows", _status, _handle, c_char_p, POINTER(Rows), POINTER(TensorView))
_proto("npkio_numpack_drop_rows_at", _status, _handle, c_char_p, POINTER(Rows))
_proto("npkio_numpack_replace_rows", _status, _handle, POINTER(TensorDesc), c_size_t,
       POINTER(Rows))
_proto("npkio_numpack_records_json", _status, _handle, c_void_p, c_size_t, POINTER(c_size_t))
_proto("npkio_numpack_names_json", _status, _handle, c_void_p, c_size_t, POINTER(c_size_t))
_proto("npkio_numpack_data_fd", _status, _handle, c_char_p, POINTER(ctypes.c_int),
       POINTER(c_uint64))
_proto("npkio_safetensors_tensor_fd", _status, _handle, c_size_t, POINTER(ctypes.c_int),
       POINTER(c_uint64))

_proto("npkio_safetensors_find", _status, _handle, c_char_p, POINTER(TensorView),
       POINTER(c_size_t))
_proto("npkio_numpack_metadata_count", _status, _handle, POINTER(c_size_t))
_proto("npkio_numpack_metadata_get", _status, _handle, c_size_t, _out_str,
       POINTER(c_size_t), _out_str, POINTER(c_size_t))


class LoadOptions(ctypes.Structure):
    """``NpkioLoadOptions``: how to load (filled by ``npkio_load_options_init``)."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("threads", c_uint32),
        ("method", c_uint32),
        ("drop_behind", c_bool),
        ("chunk_size", c_size_t),
        ("progress", c_void_p),
        ("progress_user", c_void_p),
        ("range_size", c_size_t),
        ("concurrency", c_uint32),
    ]


class LoadRequest(ctypes.Structure):
    """``NpkioLoadRequest``: one tensor (or slice of one) to load into ``dst``."""

    _fields_ = [
        ("name", c_char_p),
        ("slice", c_uint32),
        ("dim", c_uint32),
        ("start", c_uint64),
        ("end", c_uint64),
        ("dtype", c_uint32),
        ("dst", c_void_p),
        ("capacity", c_size_t),
    ]


class LoadReport(ctypes.Structure):
    """``NpkioLoadReport``: what a load did."""

    _fields_ = [
        ("bytes_out", c_uint64),
        ("bytes_read", c_uint64),
        ("direct_bytes", c_uint64),
        ("tasks", c_size_t),
        ("threads", c_size_t),
        ("direct_refused", c_bool),
    ]


_proto("npkio_load_open", _status, c_char_p, _out_handle)
_proto("npkio_load_free", None, _handle)
_proto("npkio_load_count", _status, _handle, POINTER(c_size_t))
_proto("npkio_load_get", _status, _handle, c_size_t, POINTER(TensorView))
_proto("npkio_load_find", _status, _handle, c_char_p, POINTER(TensorView), POINTER(c_size_t))
_proto("npkio_load_options_init", _status, POINTER(LoadOptions), c_size_t)
_proto("npkio_load_output_size", _status, _handle, POINTER(LoadRequest), POINTER(c_size_t))
_proto("npkio_load_output_shape", _status, _handle, POINTER(LoadRequest), POINTER(c_uint64), c_size_t,
       POINTER(c_size_t))
_proto("npkio_load_run", _status, _handle, POINTER(LoadRequest), c_size_t,
       POINTER(LoadOptions), POINTER(LoadReport))

NPKIO_LOAD_WHOLE = 0
NPKIO_LOAD_RANGE = 1
NPKIO_LOAD_SHARD = 2
NPKIO_LOAD_AS_STORED = 0xFFFFFFFF
NPKIO_LOAD_METHODS = {"auto": 0, "buffered": 1, "direct": 2}

NPKIO_STATUS_BUFFER_TOO_SMALL = 102
NPKIO_FLAG_DURABLE = 1
NPKIO_FLAG_NO_WAIT = 2
NPKIO_FLAG_NO_CLOBBER = 4


def check(status: int) -> None:
    """Raise the exception for a failed call, with the calling thread's last error message."""
    if status == 0:
        return
    raw = lib.npkio_last_error_message() or b""
    name = lib.npkio_status_name(status)
    raise error_for_status(
        status,
        raw.decode("utf-8", "replace"),
        name.decode("ascii") if name else f"status {status}",
    )


#: Bytes first offered to a ``*_json`` function; a larger document is fetched again with a
#: buffer of its exact size (not kept afterwards).
_JSON_CAPACITY = 1 << 16
#: One such buffer per thread, reused from call to call.
_json_buffers = threading.local()


def call_json(fn: Callable[..., int], *args: Any) -> "bytes | bytearray":
    """The document an ``npkio_*_json(args..., buffer, capacity, &json_len)`` function
    writes, as bytes: one foreign call when it fits the thread's buffer, two otherwise."""
    need = c_size_t()
    buf = getattr(_json_buffers, "buf", None)
    if buf is None:
        buf = _json_buffers.buf = ctypes.create_string_buffer(_JSON_CAPACITY)
    status = fn(*args, buf, len(buf), ctypes.byref(need))
    if status == NPKIO_STATUS_BUFFER_TOO_SMALL and need.value > len(buf):
        # The library kept the document it made: take it rather than make it again.
        big = bytearray(need.value)
        status = lib.npkio_json_take(
            (ctypes.c_char * len(big)).from_buffer(big), len(big), ctypes.byref(need)
        )
        check(status)
        return big
    check(status)
    return ctypes.string_at(buf, need.value)


# ----------------------------------------------------------------------------------------
# Arguments


#: The URL schemes of object storage (as the library tells them from local paths).
URL_SCHEMES = ("s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://",
               "http://", "https://")


def is_url(path: Any) -> bool:
    """Whether ``path`` is a URL of object storage (by its scheme): passed to the library as
    it is, never looked up on the local filesystem."""
    return isinstance(path, str) and path[:8].lower().startswith(URL_SCHEMES)


def path_arg(path: "os.PathLike[str] | str | bytes") -> bytes:
    """A path as the NUL-terminated bytes the C ABI takes."""
    b = os.fsencode(os.fspath(path))
    if b"\0" in b:
        raise ValueError(f"path {path!r} contains a NUL character")
    return b


def name_arg(name: str, what: str = "name") -> bytes:
    """A tensor name as NUL-terminated UTF-8."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if "\0" in name:
        raise ValueError(f"{what} {name!r} contains a NUL character")
    return name.encode("utf-8")


def str_list(names: Optional[Sequence[str]], what: str) -> "tuple[Optional[ctypes.Array], int]":
    """A list of names as ``(const char *const *, count)``; ``None`` gives ``(NULL, 0)``.

    A single ``str`` is taken as a list of one name.
    """
    if names is None:
        return None, 0
    if isinstance(names, str):
        names = [names]
    encoded = [name_arg(n, what) for n in names]
    arr = (c_char_p * max(len(encoded), 1))(*encoded)
    return arr, len(encoded)


def take_str(ptr: Optional[int], length: int) -> str:
    """A string npkio handed out as pointer and length."""
    if not length:
        return ""
    return ctypes.string_at(ptr, length).decode("utf-8")


# ----------------------------------------------------------------------------------------
# Handles


class Handle:
    """Owns one C handle and frees it when the last Python reference to it goes.

    Arrays that borrow memory from the handle reference this object (through their
    ``.base``), so the handle, and the mapping behind their data, lives at least as long as
    they do. ``lock`` serialises calls on the handle.
    """

    __slots__ = ("ptr", "_free", "lock", "__weakref__")

    def __init__(self, ptr: int, free: Callable[[int], None]) -> None:
        self.ptr = ptr
        self._free = free
        self.lock = threading.Lock()

    def __del__(self) -> None:
        ptr, self.ptr = self.ptr, None
        if ptr:
            self._free(ptr)

    def __repr__(self) -> str:
        return f"<npkio handle {self.ptr:#x}>" if self.ptr else "<npkio handle (freed)>"


def open_handle(opener: Callable[..., int], free: Callable[[int], None], *args) -> Handle:
    """Call an ``npkio_*_open``-style function whose last argument is the out-handle."""
    out = c_void_p()
    check(opener(*args, ctypes.byref(out)))
    return Handle(out.value, free)
