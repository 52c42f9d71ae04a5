"""Build a tiny offline Qwen-VL checkpoint for tests and the demo: python scripts/make_tiny_model.py OUT_DIR [--family MODEL_TYPE]"""
import sys

from swift_plugins.dev.tiny_model import main

if __name__ == "__main__":
    sys.exit(main())
