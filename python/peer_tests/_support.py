"""Names the peers' tests import that npkio does not provide, bound by ``run.py``'s
import rewriting (copied next to the rewritten tests as ``_peer_support.py``)."""

from __future__ import annotations

from typing import Any

import pytest

#: What the stand-ins were asked for during the current test (``_report`` reads it: a test
#: that used one in a thread, where the skip is lost, is still reported as skipped).
USED: "list[str]" = []


class _Missing:
    """Stands for a module or function the environment lacks (``torch``, ``npkio.torch``):
    importing it works, using it skips the test."""

    def __init__(self, what: str) -> None:
        self._what = what

    def _skip(self) -> Any:
        USED.append(self._what)
        pytest.skip(f"needs {self._what}, which is not available here")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self._skip()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._skip()


def missing(what: str) -> Any:
    """A stand-in for ``what`` that skips the test using it."""
    return _Missing(what)


def force_cleanup_windows_handles() -> None:
    """NumPack's Windows handle cleanup (its tests call it only on Windows); npkio holds no
    file handle that needs it."""
