"""Build the tiny offline Qwen3-VL used by tests and the demo: python scripts/make_tiny_model.py OUT_DIR"""
import sys

from swift_plugins.dev.tiny_model import main

if __name__ == "__main__":
    sys.exit(main())
