"""``python -m swift_plugins.dev.update_docs [FILE ...]``: regenerate the generated parts of the docs.

    docs/configuration.md                           the schema tables (swift_plugins.config.docs)
    docs/temp_packed_dataset/equivalence-analysis.md docstrings + quoted ms-swift / transformers lines

Without arguments both files above are updated; tests fail when either differs from the code.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from swift_plugins.files import atomic_write_text

__all__ = ["DEFAULT_FILES", "main", "update_files", "update_text"]

DEFAULT_FILES = ("docs/configuration.md", "docs/temp_packed_dataset/equivalence-analysis.md")


def update_text(text: str, sections: Optional[dict] = None) -> str:
    """``text`` with its schema region and its generated sections replaced (regions it lacks stay as they are)."""
    from swift_plugins.config.docs import DOC_BEGIN, update_docs
    from swift_plugins.dev.equivalence_docs import GENERATED_BEGIN, generated_sections, update_generated_docs

    if DOC_BEGIN in text:
        text = update_docs(text)
    if GENERATED_BEGIN.split("{name}")[0] in text:
        text = update_generated_docs(text, generated_sections() if sections is None else sections)
    return text


def update_files(paths: Sequence[str]) -> None:
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = update_text(text)
        atomic_write_text(path, new)
        print(f"{path}: {'updated' if new != text else 'up to date'}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a.startswith("-") for a in argv):
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    update_files(argv or DEFAULT_FILES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
