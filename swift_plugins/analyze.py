"""Entry point of the analysis: ``scripts/analyze_token_lengths.py`` (also ``python -m swift_plugins.analyze``).

    python scripts/analyze_token_lengths.py --model_path M --train_jsonl A.jsonl [B.jsonl ...] --output_dir OUT

The analysis itself is :mod:`swift_plugins.analysis.token_analysis` (plain data, no ms-swift); its
one step that needs ms-swift, calibrating the model's chat template, is the adapter's
:func:`swift_plugins.training.calibration.load_counter`, handed to it here::

    argv --options_from_argv--> AnalysisOptions --run(options, load_counter)--> OUT/ (stats, simulations, ...)

A user's mistake is one ``error:`` line and exit status 2; Ctrl-C one line and 130.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from swift_plugins.analysis import token_analysis
from swift_plugins.errors import run_main

__all__ = ["load_counter", "main"]


def load_counter(*args, **kwargs):
    """:func:`swift_plugins.training.calibration.load_counter`, imported when first called: ms-swift's import
    then follows the up-front checks, so a user's mistake is reported in a second, not after it."""
    from swift_plugins.training.calibration import load_counter as calibrated

    return calibrated(*args, **kwargs)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    token_analysis.run(token_analysis.options_from_argv(argv), load_counter)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``scripts/analyze_token_lengths.py``; user errors are ``error:`` lines and exit status 2."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
