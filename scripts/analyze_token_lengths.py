"""Exact token lengths, packing simulations and a recommended config: see --help."""
import sys

from swift_plugins.analyze import main

if __name__ == "__main__":
    sys.exit(main())
