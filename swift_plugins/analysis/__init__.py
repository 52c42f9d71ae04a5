"""Before-migration analysis: exact lengths -> stats, packing simulations, recommendation, report.

``token_analysis`` writes the JSON/JSONL/log outputs (scripts/analyze_token_lengths.py);
``memory`` estimates GPU memory per packed length; ``report`` (figures, tables) with ``summary``
(FULL_RESULTS_SUMMARY.md) and ``migrate`` read the JSON outputs (``outputs``) and never recompute them.
"""
