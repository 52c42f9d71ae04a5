"""Regenerate the bundled sample public_data/lvis/sample/ (deterministic; see swift_plugins/data/synthetic.py).

python public_data/scripts/make_sample.py            # same bytes every run
"""
import sys

from swift_plugins.data.synthetic import main_sample

if __name__ == "__main__":
    sys.exit(main_sample())
