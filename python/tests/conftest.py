"""Shared fixtures. The tests run against the installed ``npkio`` when there is one (what
``pip install ./python`` put in site-packages), not the source tree that ``python -m
pytest`` run from ``python/`` would otherwise put first on ``sys.path``."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PYTHON_DIR = TESTS.parent
REPO = PYTHON_DIR.parent
FIXTURES = REPO / "tests" / "fixtures"


def _prefer_installed() -> None:
    source = PYTHON_DIR.resolve()
    rest = [p for p in sys.path if Path(p or os.getcwd()).resolve() != source]
    saved, sys.path[:] = sys.path[:], rest
    try:
        spec = importlib.util.find_spec("npkio")
    finally:
        sys.path[:] = saved
    if spec is not None and spec.origin and any(Path(spec.origin).parent.glob("libnpkio.*")):
        sys.path[:] = rest


_prefer_installed()

import numpy as np  # noqa: E402

import npkio  # noqa: E402

if os.environ.get("NPKIO_REQUIRE_INSTALLED") == "1":
    # scripts/test.sh runs the suite against the installed wheel: the package must come from
    # site-packages and load the library inside it, not anything in the checkout.
    _pkg = Path(npkio.__file__).resolve().parent
    if PYTHON_DIR.resolve() in _pkg.parents or _pkg.parent == PYTHON_DIR.resolve():
        raise RuntimeError(f"npkio was imported from the checkout ({_pkg}), not the install")
    if npkio.library_path().resolve().parent != _pkg:
        raise RuntimeError(f"npkio loaded {npkio.library_path()}, not the copy in {_pkg}")

try:
    import ml_dtypes  # noqa: F401
    HAVE_ML_DTYPES = True
except ImportError:
    HAVE_ML_DTYPES = False


def pytest_report_header(config):
    return [
        f"npkio: {Path(npkio.__file__).parent} (library {npkio.library_path()})",
        f"ml_dtypes installed: {HAVE_ML_DTYPES}",
    ]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh empty current directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(params=["ml_dtypes", "raw"])
def dtype_mode(request, monkeypatch):
    """Runs a test twice: with ml_dtypes types (skipped when ml_dtypes is not installed),
    and with the raw fallback forced by NPKIO_NO_ML_DTYPES=1."""
    if request.param == "ml_dtypes":
        if not HAVE_ML_DTYPES:
            pytest.skip("ml_dtypes is not installed (the raw mode runs instead)")
        monkeypatch.delenv("NPKIO_NO_ML_DTYPES", raising=False)
    else:
        monkeypatch.setenv("NPKIO_NO_ML_DTYPES", "1")
    return request.param


def sha256(arr: np.ndarray) -> str:
    """sha256 of an array's bytes in C order."""
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def expected(kind: str) -> dict:
    return json.loads((FIXTURES / kind / "expected.json").read_text())


def copy_fixture(rel: str, dest: Path) -> Path:
    """A copy of a fixture file or directory, so that no test can change the originals."""
    src = FIXTURES / rel
    out = dest / Path(rel).name
    if src.is_dir():
        shutil.copytree(src, out)
    else:
        shutil.copyfile(src, out)
    return out
