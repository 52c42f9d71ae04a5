"""Regenerate the bundled messages-format sample public_data/messages/sample/ (deterministic; see
swift_plugins/data/messages_sample.py).

python public_data/scripts/make_messages_sample.py            # same bytes every run
"""
import sys

from swift_plugins.data.messages_sample import main_messages_sample

if __name__ == "__main__":
    sys.exit(main_messages_sample())
