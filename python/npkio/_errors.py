"""Exceptions: one class per C status, each also a subclass of the built-in exception a
Python caller expects, so that ``except KeyError`` and ``except npkio.NpkioError`` both work.

================================  ================================  ==============================
C status                          npkio class                       built-in base
================================  ================================  ==============================
``NPKIO_STATUS_KEY_NOT_FOUND``    :class:`NpkioKeyError`            :class:`KeyError`
``NPKIO_STATUS_NOT_FOUND``        :class:`NpkioFileNotFoundError`   :class:`FileNotFoundError`
``NPKIO_STATUS_ALREADY_EXISTS``   :class:`NpkioFileExistsError`     :class:`FileExistsError`
``NPKIO_STATUS_MALFORMED``        :class:`NpkioMalformedError`      :class:`ValueError`
``NPKIO_STATUS_INVALID_ARGUMENT`` :class:`NpkioValueError`          :class:`ValueError`
``NPKIO_STATUS_INVALID_UTF8``     :class:`NpkioValueError`          :class:`ValueError`
``NPKIO_STATUS_UNSUPPORTED``      :class:`NpkioUnsupportedError`    :class:`TypeError` *and*
                                                                    :class:`ValueError`
``NPKIO_STATUS_IO``               :class:`NpkioOSError`             :class:`OSError`
``NPKIO_STATUS_BUSY``             :class:`NpkioBusyError`           :class:`BlockingIOError`
``NPKIO_STATUS_INDEX_OUT_OF_RANGE`` :class:`NpkioIndexError`        :class:`IndexError`
anything else (a bug)             :class:`NpkioInternalError`       :class:`RuntimeError`
================================  ================================  ==============================

``NPKIO_STATUS_UNSUPPORTED`` means valid input that the target format cannot hold (a
complex128 array exported to SafeTensors, appending to a segmented array): it derives from
both ``TypeError`` and ``ValueError`` so either ``except`` clause catches it.

:data:`SafetensorError` is :class:`NpkioError` under ``safetensors``' name, so that code
written for ``safetensors`` catches npkio's errors; :class:`NpkioSliceError` (an index
``get_slice`` refuses, as ``safetensors`` does) is one of them.

Every instance has ``status`` (the C status number), ``status_name``
(``"NPKIO_STATUS_KEY_NOT_FOUND"``) and ``message`` (the library's message, also ``str(e)``).
"""

from __future__ import annotations

from typing import Dict, Type

__all__ = [
    "NpkioError",
    "NpkioKeyError",
    "NpkioFileNotFoundError",
    "NpkioFileExistsError",
    "NpkioMalformedError",
    "NpkioValueError",
    "NpkioUnsupportedError",
    "NpkioOSError",
    "NpkioBusyError",
    "NpkioIndexError",
    "NpkioInternalError",
    "NpkioSliceError",
    "SafetensorError",
]


class NpkioError(Exception):
    """Base of every error the npkio library reports; catch it to catch them all."""

    status: int = 0
    status_name: str = ""
    message: str = ""

    def __str__(self) -> str:
        return self.message or super().__str__()


class NpkioKeyError(NpkioError, KeyError):
    """A tensor or array name that is not in the file or directory."""


class NpkioFileNotFoundError(NpkioError, FileNotFoundError):
    """A file or directory that should exist does not."""


class NpkioFileExistsError(NpkioError, FileExistsError):
    """The output exists and the operation was asked not to touch it."""


class NpkioMalformedError(NpkioError, ValueError):
    """The input is not a valid file of its format (corrupt, truncated or hostile)."""


class NpkioValueError(NpkioError, ValueError):
    """A bad argument (chunk size 0, shape and data disagreeing, invalid UTF-8, ...)."""


class NpkioUnsupportedError(NpkioError, TypeError, ValueError):
    """Valid input that npkio or the target format cannot represent."""


class NpkioOSError(NpkioError, OSError):
    """An operating-system I/O error (permission denied, disk full, ...)."""


class NpkioBusyError(NpkioError, BlockingIOError):
    """Another process holds the output's lock, or was writing the sharded checkpoint
    being opened (it changed while being opened: open it again)."""


class NpkioIndexError(NpkioError, IndexError):
    """An index past the end."""


class NpkioSliceError(NpkioIndexError):
    """An index :meth:`npkio.TensorSlice.__getitem__` refuses as ``safetensors`` does (a
    non-empty list, an index or slice bound past the end), with its message."""


#: ``safetensors.SafetensorError``: npkio's base error under the name ``safetensors`` code
#: catches.
SafetensorError = NpkioError


class NpkioInternalError(NpkioError, RuntimeError):
    """A failure that points at a bug in npkio or in this package (a panic, a NULL argument)."""


_BY_STATUS: Dict[int, Type[NpkioError]] = {
    1: NpkioOSError,
    2: NpkioFileNotFoundError,
    3: NpkioFileExistsError,
    4: NpkioMalformedError,
    5: NpkioKeyError,
    6: NpkioUnsupportedError,
    7: NpkioValueError,
    8: NpkioBusyError,
    101: NpkioValueError,
    103: NpkioIndexError,
}


def error_for_status(status: int, message: str, status_name: str) -> NpkioError:
    """The exception for a C status number and message."""
    cls = _BY_STATUS.get(status, NpkioInternalError)
    err = cls(message)
    err.status = status
    err.status_name = status_name
    err.message = message
    return err
