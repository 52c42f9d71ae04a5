"""Generate the full-scale synthetic LVIS-like JSONL (width/height only, no images; git-ignored).

python public_data/scripts/make_synthetic_lvis.py --out public_data/lvis/synthetic
Read it with check_images=False. See swift_plugins/data/synthetic.py.
"""
import sys

from swift_plugins.data.synthetic import main_synthetic

if __name__ == "__main__":
    sys.exit(main_synthetic())
