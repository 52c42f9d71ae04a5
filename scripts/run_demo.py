"""The README's main job: analysis -> figures -> migration -> packed training on the bundled sample."""
import sys

from swift_plugins.dev.demo import main

if __name__ == "__main__":
    sys.exit(main())
