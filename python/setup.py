"""Build step of the npkio Python package: ``cargo build --release`` of the crate one
directory up (the library alone: ``--no-default-features`` leaves out the command line's
dependencies), then the shared library (``libnpkio.so`` / ``.dylib``) copied into the
package. The package loads it with ctypes; it is not a Python extension module, so the
wheel is tagged ``py3-none-<platform>``.

The package's version is the crate's: ``version`` in ``[package]`` of ``../Cargo.toml``, the
one place it is written.

Environment: ``CARGO`` (the cargo to run), ``CARGO_TARGET_DIR`` (honoured by cargo), and
``NPKIO_CARGO_PROFILE`` (``release`` by default; ``dev`` for a quicker debug build).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

try:  # setuptools >= 70.1 has its own
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # pragma: no cover - older setuptools
    from wheel.bdist_wheel import bdist_wheel

HERE = Path(__file__).resolve().parent
MANIFEST = HERE.parent / "Cargo.toml"
LIB_SUFFIXES = (".so", ".dylib", ".dll")


def crate_version() -> str:
    """The ``version`` of ``[package]`` in Cargo.toml."""
    if not MANIFEST.is_file():
        raise SystemExit(
            f"npkio: {MANIFEST} not found; build the package from the npkio repository "
            "(pip install ./python)"
        )
    section = None
    for line in MANIFEST.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        header = re.fullmatch(r"\[([^\[\]]+)\]", line)
        if header:
            section = header.group(1).strip()
            continue
        m = re.fullmatch(r'version\s*=\s*"([^"]+)"', line)
        if section == "package" and m:
            return m.group(1)
    raise SystemExit(f"npkio: no version in [package] of {MANIFEST}")


def build_library() -> Path:
    """Run cargo and return the path of the cdylib it built."""
    if not MANIFEST.is_file():
        raise SystemExit(
            f"npkio: {MANIFEST} not found; build the package from the npkio repository "
            "(pip install ./python)"
        )
    cargo = os.environ.get("CARGO", "cargo")
    if shutil.which(cargo) is None:
        raise SystemExit(
            "npkio: cargo was not found on PATH; install Rust (https://rustup.rs) to build "
            "the npkio library"
        )
    profile = os.environ.get("NPKIO_CARGO_PROFILE", "release")
    cmd = [
        cargo, "build", "--lib", "--no-default-features", "--profile", profile,
        "--manifest-path", str(MANIFEST),
        "--message-format=json-render-diagnostics",
    ]
    print("npkio: " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"npkio: cargo build failed (exit status {proc.returncode})")
    found = None
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact":
            continue
        if "cdylib" not in msg.get("target", {}).get("crate_types", []):
            continue
        for f in msg.get("filenames", []):
            if f.endswith(LIB_SUFFIXES):
                found = Path(f)
    if found is None or not found.is_file():
        raise SystemExit("npkio: cargo did not report the npkio shared library")
    return found


class BuildPyWithLibrary(build_py):
    """``build_py`` that also builds libnpkio and copies it into the package."""

    def run(self) -> None:
        super().run()
        lib = build_library()
        dest = Path(self.build_lib) / "npkio" / lib.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lib, dest)
        os.chmod(dest, 0o755)


class PlatformWheel(bdist_wheel):
    """A platform wheel (it carries a native library) for any Python 3."""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


class BinaryDistribution(Distribution):
    """Tells setuptools the package is not pure Python."""

    def has_ext_modules(self) -> bool:
        return True


setup(
    version=crate_version(),
    distclass=BinaryDistribution,
    cmdclass={"build_py": BuildPyWithLibrary, "bdist_wheel": PlatformWheel},
)
