"""Before-migration analysis: exact lengths -> stats, packing simulations, recommendation, report.

``token_analysis`` writes the JSON/JSONL/log outputs (scripts/analyze_token_lengths.py);
``memory`` estimates GPU memory per packed length; the report and migration modules read the
JSON outputs and never recompute them.
"""
