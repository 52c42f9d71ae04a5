"""Padding training YAML + analysis folder -> packing YAML (extends the padding one): see --help."""
import sys

from swift_plugins.analysis.migrate import main

if __name__ == "__main__":
    sys.exit(main())
