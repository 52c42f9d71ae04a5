"""swift_plugins.analyze: the analysis command (its checks and counting are tests/analysis/test_token_analysis.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import REPO, child_environment
from swift_plugins import analyze


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        analyze.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--model_path", "--train_jsonl", "--output_dir", "--max_samples", "--num_workers", "--on_error",
                 "--clear_cache", "--max_lengths", "--strategies", "--packing_buffer", "--effective_batch_size"):
        assert flag in text


CHECK = """
import sys
from swift_plugins.analyze import main
code = main(["--model_path", sys.argv[1], "--train_jsonl", sys.argv[2], "--output_dir", sys.argv[3]])
print("exit", code, "ms-swift imported:", "swift" in sys.modules)
"""


def test_a_mistake_is_reported_before_ms_swift_is_imported(tiny_model_dir, tmp_path):
    """The template calibration (ms-swift, seconds to import) is loaded only when the analysis reaches it."""
    missing = tmp_path / "missing.jsonl"
    proc = subprocess.run([sys.executable, "-c", CHECK, str(tiny_model_dir), str(missing), str(tmp_path / "out")],
                          cwd=REPO, env=child_environment(), capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines()[-1] == "exit 2 ms-swift imported: False", proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(missing) in line
