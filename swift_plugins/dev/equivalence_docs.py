"""Sections of ``docs/temp_packed_dataset/equivalence-analysis.md`` generated from code.

Docstrings of our modules (the image-token rule, the packing algorithm) and quoted lines of the
installed ms-swift / transformers, each with file:line and the function it is in, so a version
change shows up as a diff instead of a stale doc. A quoted line that no longer exists makes the
update fail: the doc's claim must then be re-checked. Developer tooling (imports ms-swift).
"""
from __future__ import annotations

import os
import textwrap
from typing import Optional, Sequence

__all__ = ["GENERATED_BEGIN", "GENERATED_END", "LIBRARY_LINES", "generated_sections", "update_generated_docs"]

GENERATED_BEGIN = "<!-- generated:{name} begin: python -m swift_plugins.dev.update_docs -->"
GENERATED_END = "<!-- generated:{name} end -->"

# (module, text that must occur in it, what the line shows): quoted with file:line by --update_docs.
# A needle that no longer occurs makes the update fail: the doc's claim must then be re-checked.
LIBRARY_LINES = (
    ("swift.template.base", "encoded['labels'][0] = -100",
     "ms-swift encode: the first label of every sample is ignored"),
    ("swift.template.base", "outputs.loss * ((labels[:, 1:] != -100).sum() / num_items_in_batch)",
     "ms-swift loss: micro-batch mean x its label count / label count of the whole optimizer step"),
    ("swift.trainers.seq2seq_trainer", "loss *= self.accelerator.num_processes",
     "ms-swift: undo DDP's gradient mean over ranks (the count is already global)"),
    ("transformers.trainer", "num_items_in_batch = sum(labels.ne(-100).sum() for labels in labels_for_count)",
     "transformers: label tokens of all micro-batches of the optimizer step"),
    ("transformers.trainer", "num_items_in_batch = self.accelerator.gather(num_items_in_batch.to(device)).sum()",
     "transformers: summed over ranks (average_tokens_across_devices)"),
    ("transformers.trainer", "len_dataloader // args.gradient_accumulation_steps",
     "transformers: optimizer steps per epoch = ceil(micro-batches / gradient_accumulation_steps)"),
)


def _library_line(module_name: str, needle: str) -> str:
    import importlib
    import inspect

    module = importlib.import_module(module_name)
    path = inspect.getsourcefile(module)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines, 1):
        if needle in line:
            top = module_name.split(".")[0]
            rel = path[path.rindex(os.sep + top + os.sep) + 1:]
            owner = _enclosing_def(lines, i - 1)
            return f"{rel}:{i} (in {owner}): {line.strip()}"
    raise RuntimeError(f"{module_name} ({path}) no longer contains {needle!r}: re-check the claim in the docs "
                       f"before regenerating them")


def _enclosing_def(lines: Sequence[str], index: int) -> str:
    """Name of the function whose body holds ``lines[index]`` (nearest less-indented ``def`` above)."""
    indent = len(lines[index]) - len(lines[index].lstrip())
    for j in range(index - 1, -1, -1):
        stripped = lines[j].lstrip()
        if stripped.startswith("def ") and len(lines[j]) - len(stripped) < indent:
            return stripped[4:].split("(")[0]
    return "module"


def _fenced(text: str, lang: str = "text") -> str:
    return f"```{lang}\n{text.strip(chr(10))}\n```"


def generated_sections() -> dict:
    """Doc sections generated from code: docstrings of swift_plugins modules and quoted lines of the
    installed ms-swift / transformers (so a version change shows up as a diff, not as a stale doc)."""
    import inspect

    import transformers
    from swift.template.base import Template
    from swift.template.templates.qwen import Qwen3VLTemplate
    from swift.version import __version__ as swift_version

    from swift_plugins.lengths import image_rule
    from swift_plugins.packing import planner

    quoted = [f"# {why}\n{_library_line(mod, needle)}" for mod, needle, why in LIBRARY_LINES]
    return {
        "image-tokens": "From the docstring of `swift_plugins/lengths/image_rule.py`:\n\n" + _fenced(image_rule.__doc__),
        "packing-algorithm": "From the docstring of `swift_plugins/packing/planner.py`:\n\n" + _fenced(planner.__doc__),
        "library-lines": (f"Installed ms-swift {swift_version}, transformers {transformers.__version__}:\n\n"
                          + _fenced("\n\n".join(quoted))),
        "packing-row": ("ms-swift's Qwen3-VL packing of a row (`Qwen3VLTemplate.packing_row`, defined on "
                        f"`{Qwen3VLTemplate.packing_row.__qualname__}`): position ids per sample, then "
                        "concatenated by `Template.packing_row`:\n\n"
                        + _fenced(textwrap.dedent(inspect.getsource(Qwen3VLTemplate.packing_row)), "python")
                        + "\n\n" + _fenced(textwrap.dedent(inspect.getsource(Template.packing_row)), "python")),
    }


def update_generated_docs(text: str, sections: Optional[dict] = None) -> str:
    """``text`` with every ``<!-- generated:NAME begin ... -->`` region replaced by section NAME."""
    sections = generated_sections() if sections is None else sections
    for name, body in sections.items():
        begin, end = GENERATED_BEGIN.format(name=name), GENERATED_END.format(name=name)
        if begin not in text:
            continue
        a, b = text.index(begin) + len(begin), text.index(end)
        text = text[:a] + "\n" + body.strip("\n") + "\n" + text[b:]
    return text


