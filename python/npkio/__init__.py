"""npkio: zero-copy conversion between SafeTensors files and NumPack directories.

A ``ctypes`` package over the ``libnpkio`` shared library (no compiled extension module).

* :mod:`npkio.io`: the SafeTensors API of ``numpack.io`` (``from_tensor_dict``,
  ``to_tensor_dict`` and their older names ``from_safetensors``, ``to_safetensors``;
  ``from_safetensors_file``, ``to_safetensors_file``, ``get_safetensors_metadata``,
  ``iter_safetensors``, ``DEFAULT_CHUNK_SIZE``).
* :mod:`npkio.files`: the file API of ``safetensors.numpy`` (``save_file``, ``load_file``,
  ``save``, ``load``) and ``safetensors``' ``TensorSpec``, ``serialize`` and
  ``serialize_file``, also importable from ``npkio`` itself. Arrays come back writable
  and zero-copy (private copy-on-write mappings), as the peers return them.
* :class:`npkio.NumPack`: a NumPack directory (``load``, ``save``, ``append``, ``drop``,
  ``get_member_list``, ``get_shape``, and NumPack 0.7's ``getitem``, ``replace``,
  ``clone``, ``update``, ``reset``, ``stream_load``, ``get_metadata``,
  ``get_modify_time``), usable as a context manager.
* :func:`npkio.load_tensors`: tensors, slices and tensor-parallel shards read in parallel
  into memory of their own (or the caller's), with BF16/F16/F32 conversion on the way;
  :func:`npkio.safe_open`: ``safetensors.safe_open(path, framework="np")`` over SafeTensors
  files, sharded checkpoints and NumPack directories (:mod:`npkio.loader`).
* :mod:`npkio.torch` (needs PyTorch, imported on use): the file API of
  ``safetensors.torch``; ``load_tensors`` and ``safe_open`` take ``framework="pt"``.
* :class:`npkio.NpkioError` (also named ``SafetensorError``) and its subclasses, each
  also a built-in exception (``KeyError``, ``FileNotFoundError``, ``FileExistsError``,
  ``ValueError``, ...).
* :func:`npkio.dtype_of`, :func:`npkio.raw_dtype`: dtypes NumPy lacks (BF16, FP8, F4, F6).

Environment: ``NPKIO_LIBRARY`` names the shared library to load (for development);
``NPKIO_NO_ML_DTYPES=1`` returns BF16/FP8 as raw unsigned arrays tagged with their dtype
(without it, and without ``ml_dtypes``, reading them raises ``ImportError``).
"""

from __future__ import annotations

from . import files, io, loader
from ._dtypes import DTYPE_NAMES, dtype_of, raw_dtype, use_ml_dtypes
from ._errors import (
    NpkioBusyError,
    NpkioError,
    NpkioFileExistsError,
    NpkioFileNotFoundError,
    NpkioIndexError,
    NpkioInternalError,
    NpkioKeyError,
    NpkioMalformedError,
    NpkioOSError,
    NpkioSliceError,
    NpkioUnsupportedError,
    NpkioValueError,
    SafetensorError,
)
from ._lib import lib as _clib
from ._lib import library_path
from .io import (
    DEFAULT_CHUNK_SIZE,
    from_safetensors,
    from_safetensors_file,
    from_tensor_dict,
    get_safetensors_metadata,
    iter_safetensors,
    to_safetensors,
    to_safetensors_file,
    to_tensor_dict,
)
from .files import TensorSpec, load, load_file, save, save_file, serialize, serialize_file
from .io import SafeTensorsMetadata, TensorMetadata
from .numpack import NumPack, NumPackStateError
from .loader import Range, SafeOpen, Shard, TensorSlice, load_tensors, safe_open, shard
from .loader import range_slice as slice  # noqa: A001 - npkio.slice, as npkio.shard

#: The version of the loaded ``libnpkio``, which is this package's version: the package is
#: built with the library, both from the crate's Cargo.toml.
library_version: str = _clib.npkio_version().decode("ascii")
#: The version of this package (``library_version``).
__version__ = library_version

__all__ = [
    "io",
    "files",
    "loader",
    "NumPack",
    "NumPackStateError",
    "load_tensors",
    "shard",
    "Shard",
    "slice",
    "Range",
    "safe_open",
    "SafeOpen",
    "TensorSlice",
    "save_file",
    "load_file",
    "save",
    "load",
    "serialize",
    "serialize_file",
    "TensorSpec",
    "SafetensorError",
    "SafeTensorsMetadata",
    "TensorMetadata",
    "DEFAULT_CHUNK_SIZE",
    "from_tensor_dict",
    "to_tensor_dict",
    "from_safetensors",
    "to_safetensors",
    "from_safetensors_file",
    "to_safetensors_file",
    "get_safetensors_metadata",
    "iter_safetensors",
    "dtype_of",
    "raw_dtype",
    "use_ml_dtypes",
    "DTYPE_NAMES",
    "library_path",
    "library_version",
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
    "NpkioSliceError",
    "NpkioInternalError",
]
