"""A pytest plugin for ``run.py``: writes each test's outcome and a one-line reason to the
JSON file named by ``NPKIO_PEER_REPORT``."""

from __future__ import annotations

import json
import os
from typing import Any, Dict

_results: Dict[str, Dict[str, str]] = {}


def _reason(report: Any) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        text = crash.message
    elif isinstance(report.longrepr, tuple):  # a skip: (file, line, reason)
        text = str(report.longrepr[2])
    else:
        text = str(report.longrepr or "")
    lines = text.strip().splitlines()
    errors = [x[1:].strip() for x in lines if x.startswith("E ")]
    line = errors[-1] if errors else (lines[0] if lines else "")
    return line[:200]


def _stand_ins_used() -> "list[str]":
    try:
        import _peer_support  # noqa: PLC0415
    except ImportError:
        return []
    return _peer_support.USED


def pytest_runtest_setup(item: Any) -> None:
    del _stand_ins_used()[:]


def pytest_runtest_logreport(report: Any) -> None:
    entry = _results.setdefault(report.nodeid, {"outcome": "passed", "reason": ""})
    used = _stand_ins_used()
    if report.when == "call" and used:
        # A stand-in for a missing module was used (in a thread, its skip is lost).
        entry["outcome"] = "skipped"
        entry["reason"] = f"needs {used[0]}, which is not available here"
        return
    if report.failed:
        if entry["outcome"] != "failed":
            entry["outcome"] = "failed"
            entry["reason"] = _reason(report)
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"
        entry["reason"] = _reason(report)


def pytest_collectreport(report: Any) -> None:
    if report.failed:
        text = str(report.longrepr or "")
        errors = [x[1:].strip() for x in text.splitlines() if x.startswith("E ")]
        _results[report.nodeid or "<collection>"] = {
            "outcome": "failed",
            "reason": "collection error: " + (errors[-1] if errors else text.strip()[:200]),
        }


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    path = os.environ.get("NPKIO_PEER_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(_results, f, indent=1, sort_keys=True)
