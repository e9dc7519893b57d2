"""The peers' tests runner (peer_tests/run.py) changes import lines only, and each as meant."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "peer_run", Path(__file__).resolve().parent.parent / "peer_tests" / "run.py"
)
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)  # type: ignore[union-attr]


def test_import_lines_are_rewritten_for_npkio():
    cases = {
        "from safetensors.numpy import load, save_file\n": "from npkio import load, save_file\n",
        "from safetensors import SafetensorError, safe_open\n":
            "from npkio import SafetensorError, safe_open\n",
        "    from numpack.io import from_tensor_dict\n":
            "    from npkio.io import from_tensor_dict\n",
        "from numpack.io import (\n": "from npkio.io import (\n",
        "import numpack as npk\n": "import npkio as npk\n",
        "from numpack import NumPack\n": "from npkio import NumPack\n",
        "from numpack import NumPack, force_cleanup_windows_handles\n":
            "from npkio import NumPack\n"
            "from _peer_support import force_cleanup_windows_handles\n",
    }
    for before, after in cases.items():
        assert run.rewrite_line(before) == after
    torch = run.rewrite_line("import torch\n")
    assert torch.startswith("try:\n    import torch\nexcept ImportError:\n")
    pt = run.rewrite_line("from safetensors.torch import load_file as load_file_pt\n")
    assert "from npkio.torch import load_file as load_file_pt" in pt
    assert "load_file_pt = _peer_missing('npkio.torch.load_file')" in pt
    compile(pt + torch, "<rewritten>", "exec")


def test_other_lines_are_left_alone():
    for line in ("x = numpack.load('a')\n", "# from numpack import NumPack\n",
                 "import numpy as np\n", "from pathlib import Path\n", "    pass"):
        assert run.rewrite_line(line) == line


def test_expected_failures_match_by_id_with_wildcards():
    m = run._matcher("test_a.py::T::test_x[*]")
    assert m.match("test_a.py::T::test_x[int8-1]")
    assert not m.match("test_a.py::T::test_xy[int8]")
    expected = run.load_expected(run.HERE / "expected.toml")
    assert set(expected) == {"safetensors", "numpack"}
    assert all(reason for suite in expected.values() for reason in suite.values())
