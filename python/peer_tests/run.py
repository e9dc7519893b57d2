#!/usr/bin/env python3
"""Run the test suites of the packages npkio stands in for against the installed npkio.

npkio's Python package claims to replace ``safetensors.numpy`` / ``safetensors.safe_open``
and NumPack 0.7's ``NumPack`` class and ``numpack.io`` SafeTensors functions. The measure
is their own tests, with only the import lines changed:

* safetensors 0.8.0, ``bindings/python/tests``: ``test_simple.py``, ``test_threadable.py``,
  ``test_multithreaded.py`` (their tests that need torch are skipped when torch or
  ``npkio.torch`` is missing). ``test_handle.py`` is left out: every test in it calls the
  private ``safetensors._safe_open_handle``. The other files need torch, TensorFlow, JAX,
  Paddle or MLX.
* NumPack 0.7.0, ``python/numpack/tests``: the ``NumPack`` class, lazy loading and
  ``numpack.io``'s SafeTensors functions (see ``SUITES`` below). Left out: batch modes,
  the vector engine, ``.npkg`` packages, conversions from other formats (npy, csv, hdf5,
  parquet, zarr, torch), the DLPack/Arrow helpers and NumPack's Windows handle tests.

The tests are taken at run time from the sdists on PyPI (``pip download``, pinned by
hash, cached in ``--cache``, so later runs need no network) and never copied into the
repository. Their import lines are rewritten (``from safetensors.numpy import`` ->
``from npkio import``, ``numpack.io`` -> ``npkio.io``, ``from numpack import NumPack`` ->
``from npkio import NumPack``); nothing else in them changes.

``expected.toml`` lists every test known to fail, with the reason. The run fails (exit
1) when a test not listed there fails, and names the listed tests that now pass so that
the list can shrink.

Usage: ``python peer_tests/run.py [--suite safetensors|numpack] [--cache DIR] [FILE ...]``
with the interpreter that has npkio, pytest, numpy and ml_dtypes installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

#: Each suite: the sdist (pinned by its sha256), where its tests are inside it, the test
#: files (optionally narrowed to ``file::Class``), and support files extracted beside them.
SUITES: Dict[str, Dict[str, object]] = {
    "safetensors": {
        "requirement": "safetensors==0.8.0",
        "sha256": "fabaf3e0f18a6618d9b36560682562157f77c2b71fcffc7b432be2baed9d753d",
        "archive": "safetensors-0.8.0.tar.gz",
        "tests": "safetensors-0.8.0/bindings/python/tests",
        "support": [],
        "files": ["test_simple.py", "test_threadable.py", "test_multithreaded.py"],
    },
    "numpack": {
        "requirement": "numpack==0.7.0",
        "sha256": "6e2be773d37ae209f82dc2997daaf5b1d00d9a9940b7a915d464dcd99b41d6eb",
        "archive": "numpack-0.7.0.tar.gz",
        "tests": "numpack-0.7.0/python/numpack/tests",
        "support": ["conftest.py"],
        "files": [
            "test_numpack.py",
            "test_advanced_api.py",
            "test_open_close.py",
            "test_drop_scenarios.py",
            "test_drop_append_lazy.py",
            "test_user_intent.py",
            "test_cross_platform.py",
            "test_thread_safety.py",
            "test_lazy_array_advanced.py",
            "test_lazy_array_operators.py",
            "test_inplace_operators.py",
            "test_diagnose_inplace.py",
            "test_windows_handles.py",
            "test_return_npk_obj.py::TestReturnNpkObjSafetensors",
        ],
    },
}

# -- fetching ---------------------------------------------------------------------------


def fetch(cache: Path, python: str) -> None:
    """Download the sdists that are not in ``cache`` yet, with pip, checking their hashes."""
    cache.mkdir(parents=True, exist_ok=True)
    wanted = [s for s in SUITES.values() if not (cache / str(s["archive"])).is_file()]
    if not wanted:
        return
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(
            "".join(f"{s['requirement']} --hash=sha256:{s['sha256']}\n" for s in wanted)
        )
        names = ",".join(str(s["requirement"]).split("==")[0] for s in wanted)
        # ``--no-binary`` names the two packages only: with ``:all:`` pip would also build
        # their build backend (maturin) from source just to read their metadata.
        cmd = [
            python, "-m", "pip", "download", "--no-deps", "--no-binary", names,
            "--require-hashes", "-r", str(req), "-d", tmp, "-q",
        ]
        print("fetching:", " ".join(str(s["requirement"]) for s in wanted), flush=True)
        subprocess.run(cmd, check=True)
        for s in wanted:
            shutil.move(str(Path(tmp) / str(s["archive"])), str(cache / str(s["archive"])))


# -- rewriting the imports --------------------------------------------------------------

_NAMES = re.compile(r"^(\s*)from\s+([\w.]+)\s+import\s+(.+?)\s*$")


def _split_names(text: str) -> List[Tuple[str, str]]:
    """``a, b as c`` -> [(a, a), (b, c)]."""
    out = []
    for part in text.strip("() ").split(","):
        part = part.strip()
        if not part:
            continue
        bits = part.split()
        out.append((bits[0], bits[2] if len(bits) == 3 and bits[1] == "as" else bits[0]))
    return out


#: NumPack names that npkio does not provide, bound to ``_peer_support``'s stand-ins.
_SUPPORT_NAMES = {"force_cleanup_windows_handles"}


def rewrite_line(line: str) -> str:
    """One source line with its import of ``safetensors``/``numpack``/``torch`` rewritten
    for npkio; any other line unchanged."""
    body = line.rstrip("\n")
    nl = line[len(body):]
    indent = body[: len(body) - len(body.lstrip())]
    stripped = body.strip()

    def block(lines: List[str]) -> str:
        return "".join(indent + x + "\n" for x in lines)[:-1] + nl

    if stripped == "import torch":
        return block([
            "try:", "    import torch", "except ImportError:",
            "    from _peer_support import missing as _peer_missing",
            "    torch = _peer_missing('torch')",
        ])
    if stripped == "import numpack as npk":
        return indent + "import npkio as npk" + nl
    m = _NAMES.match(body)
    if not m:
        return line
    module, names = m.group(2), m.group(3)
    if module == "safetensors.torch":
        pairs = _split_names(names)
        return block(
            ["try:", f"    from npkio.torch import {names}", "except ImportError:",
             "    from _peer_support import missing as _peer_missing"]
            + [f"    {alias} = _peer_missing('npkio.torch.{name}')" for name, alias in pairs]
        )
    if module in ("safetensors", "safetensors.numpy"):
        return indent + f"from npkio import {names}" + nl
    if module == "numpack.io" or module.startswith("numpack.io."):
        return indent + f"from npkio{module[len('numpack'):]} import {names}" + nl
    if module == "numpack":
        pairs = _split_names(names)
        ours = [(n, a) for n, a in pairs if n not in _SUPPORT_NAMES]
        theirs = [(n, a) for n, a in pairs if n in _SUPPORT_NAMES]
        out = []
        for mod, group in (("npkio", ours), ("_peer_support", theirs)):
            if group:
                listed = ", ".join(n if n == a else f"{n} as {a}" for n, a in group)
                out.append(f"from {mod} import {listed}")
        return block(out)
    return line


def rewrite(source: str) -> str:
    return "".join(rewrite_line(line) for line in source.splitlines(keepends=True))


def extract(cache: Path, suite: str) -> Path:
    """The suite's selected test files, rewritten, in a fresh ``cache/work/<suite>``."""
    spec = SUITES[suite]
    work = cache / "work" / suite
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    wanted = {f.split("::")[0] for f in spec["files"]} | set(spec["support"])  # type: ignore
    prefix = str(spec["tests"]) + "/"
    with tarfile.open(cache / str(spec["archive"])) as tar:
        for member in tar.getmembers():
            name = member.name[len(prefix):] if member.name.startswith(prefix) else None
            if name in wanted and member.isfile():
                data = tar.extractfile(member).read().decode("utf-8")  # type: ignore
                (work / name).write_text(rewrite(data), encoding="utf-8")
    missing = wanted - {p.name for p in work.iterdir()}
    if missing:
        raise SystemExit(f"{spec['archive']} lacks {sorted(missing)}")
    shutil.copy(HERE / "_support.py", work / "_peer_support.py")
    shutil.copy(HERE / "_report.py", work / "_peer_report.py")
    # pytest's rootdir: keeps the repository's configuration out of the peers' runs.
    (work / "pytest.ini").write_text("[pytest]\n")
    return work


# -- running ----------------------------------------------------------------------------


def run_file(python: str, work: Path, target: str, timeout: int) -> Dict[str, Dict[str, str]]:
    """Run pytest on one file (or ``file::Class``); outcome and reason per test id."""
    report = work / ".report.json"
    if report.exists():
        report.unlink()
    scratch = Path(tempfile.mkdtemp(prefix="npkio-peer-"))
    env = dict(os.environ, NPKIO_PEER_REPORT=str(report))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(work)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    cmd = [
        python, "-m", "pytest", "-q", "-p", "_peer_report", "-p", "no:cacheprovider",
        "--rootdir", str(work), "-c", str(work / "pytest.ini"), "-W", "ignore",
        str(work / target),
    ]
    try:
        # The safetensors tests write files into the current directory: a scratch one.
        subprocess.run(cmd, cwd=scratch, env=env, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {target: {"outcome": "failed", "reason": f"timed out after {timeout} s"}}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not report.exists():
        return {target: {"outcome": "failed", "reason": "pytest wrote no report (crashed?)"}}
    return json.loads(report.read_text())


def load_expected(path: Path) -> Dict[str, Dict[str, str]]:
    """``expected.toml``: per suite, test id (``*`` matches anything) -> reason."""
    try:
        import tomllib  # noqa: PLC0415
    except ImportError:  # Python < 3.11
        import tomli as tomllib  # type: ignore  # noqa: PLC0415
    with open(path, "rb") as f:
        return tomllib.load(f)


def _matcher(pattern: str) -> "re.Pattern[str]":
    return re.compile("^" + ".*".join(re.escape(p) for p in pattern.split("*")) + "$")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", choices=sorted(SUITES), action="append",
                    help="run only this suite (repeatable)")
    ap.add_argument("--cache", type=Path, default=REPO / "target" / "peer-tests",
                    help="where the sdists and rewritten tests go (default: target/peer-tests)")
    ap.add_argument("--expected", type=Path, default=HERE / "expected.toml")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter with npkio installed (default: this one)")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per file")
    ap.add_argument("files", nargs="*", help="run only these files (file or file::Class)")
    args = ap.parse_args(argv)
    args.cache = args.cache.resolve()

    expected = load_expected(args.expected)
    fetch(args.cache, args.python)
    unexpected: List[Tuple[str, str]] = []
    now_passing: List[str] = []
    for suite in args.suite or sorted(SUITES):
        spec = SUITES[suite]
        targets = [f for f in spec["files"] if not args.files or f in args.files  # type: ignore
                   or f.split("::")[0] in args.files]
        if not targets:
            continue
        work = extract(args.cache, suite)
        known = {k: (_matcher(k), v) for k, v in expected.get(suite, {}).items()}
        used = set()
        totals = {"passed": 0, "failed": 0, "skipped": 0}
        print(f"\n== {spec['requirement']} ({spec['tests']})", flush=True)
        for target in targets:
            results = run_file(args.python, work, target, args.timeout)
            counts = {"passed": 0, "failed": 0, "skipped": 0}
            failures = []
            for test_id, r in sorted(results.items()):
                counts[r["outcome"]] += 1
                hits = [k for k, (rx, _) in known.items() if rx.match(test_id)]
                if r["outcome"] == "failed":
                    if hits:
                        used.update(hits)
                        failures.append((test_id, known[hits[0]][1], True))
                    else:
                        failures.append((test_id, r["reason"], False))
                elif r["outcome"] == "passed" and hits:
                    now_passing.append(f"{suite}: {test_id}")
            for k in totals:
                totals[k] += counts[k]
            print(f"{target:55s} {counts['passed']:4d} passed {counts['failed']:4d} failed "
                  f"{counts['skipped']:4d} skipped", flush=True)
            for test_id, reason, listed in failures:
                if not listed:
                    unexpected.append((f"{suite}: {test_id}", reason))
                mark = "  expected" if listed else "  NEW FAILURE"
                print(f"{mark}: {test_id}\n      {reason}")
        print(f"{suite}: {totals['passed']} passed, {totals['failed']} failed "
              f"({totals['failed'] - sum(1 for u in unexpected if u[0].startswith(suite + ':'))}"
              f" expected), {totals['skipped']} skipped")
        stale = [k for k in known if k not in used and not args.files]
        for k in stale:
            print(f"  listed in {args.expected.name} but did not fail: {k}")
    if now_passing:
        print(f"\n{len(now_passing)} test(s) listed in {args.expected.name} now pass; "
              "remove them from the list:")
        for t in now_passing:
            print("  " + t)
    if unexpected:
        print(f"\n{len(unexpected)} unexpected failure(s):")
        for t, reason in unexpected:
            print(f"  {t}: {reason}")
        return 1
    print("\nno unexpected failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
