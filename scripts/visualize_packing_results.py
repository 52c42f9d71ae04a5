"""Figures, padding-vs-packing and memory tables, FULL_RESULTS_SUMMARY.md from an analysis folder: see --help."""
import sys

from swift_plugins.analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
