"""Build of the npkio Python package with setuptools-rust.

The package is a ``ctypes`` binding: the Rust crate's C ABI library (``libnpkio``) is built
by cargo as a plain cdylib (``Binding.NoBinding``: no Python extension module, no PyO3) and
installed inside the package, where :mod:`npkio._lib` loads it. Only the library is built,
with reading from object storage: ``--no-default-features --features remote`` leaves out the
command line and its dependencies and keeps ``s3://``, ``gs://``, ``az://`` and
``http(s)://`` URLs.

Where the crate is: one directory up in a checkout (``pip install ./python``); in an sdist,
beside this file, because :class:`SdistWithCrate` copies the crate's sources into it. The
package's version is the crate's: ``version`` in ``[package]`` of that Cargo.toml, the one
place it is written.

Environment: ``CARGO`` and ``CARGO_TARGET_DIR`` (honoured by cargo and setuptools-rust);
``SETUPTOOLS_RUST_CARGO_PROFILE=dev`` for a quicker debug build.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.sdist import sdist
from setuptools_rust import Binding, RustExtension, Strip

try:  # setuptools >= 70.1 has its own
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # pragma: no cover - older setuptools
    from wheel.bdist_wheel import bdist_wheel

HERE = Path(__file__).resolve().parent
# An sdist carries the crate beside this file; a checkout has it one directory up.
CRATE = HERE if (HERE / "Cargo.toml").is_file() else HERE.parent
MANIFEST = CRATE / "Cargo.toml"
# What `cargo build --lib --no-default-features` of the crate reads, plus the C header and
# the licence: copied into the sdist's root.
CRATE_FILES = ["Cargo.toml", "Cargo.lock", "src", "include", "cbindgen.toml"]


def crate_version() -> str:
    """The ``version`` of ``[package]`` in Cargo.toml."""
    if not MANIFEST.is_file():
        raise SystemExit(f"npkio: {MANIFEST} not found; build from the npkio repository or its sdist")
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


class SdistWithCrate(sdist):
    """An sdist that builds anywhere: the crate's sources go into its root, beside the
    package (from a checkout they live one directory up, which setuptools cannot reach)."""

    def make_release_tree(self, base_dir: str, files) -> None:
        super().make_release_tree(base_dir, files)
        if CRATE == HERE:
            return  # already an sdist: the crate is among the files
        for name in CRATE_FILES:
            src, dest = CRATE / name, Path(base_dir) / name
            if src.is_dir():
                shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.orig", "*.rej"))
            elif src.is_file():
                shutil.copyfile(src, dest)


class PlatformWheel(bdist_wheel):
    """A wheel for any Python 3 on one platform: the library is loaded with ctypes, so it
    does not depend on the interpreter's ABI (``py3-none-<platform>``)."""

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(
    version=crate_version(),
    rust_extensions=[
        RustExtension(
            # Installed as npkio/libnpkio<suffix>.so; npkio._lib finds it by its prefix.
            "npkio.libnpkio",
            path=str(MANIFEST),
            binding=Binding.NoBinding,
            args=["--no-default-features", "--features", "remote"],
            cargo_manifest_args=["--locked"],
            strip=Strip.All,
            py_limited_api=False,
        )
    ],
    cmdclass={"sdist": SdistWithCrate, "bdist_wheel": PlatformWheel},
    zip_safe=False,
)
