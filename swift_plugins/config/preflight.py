"""Checks of a resolved config against the machine, before torch or ms-swift is imported.

The schema checks what a value is; these check what it points at, as ``python -m
swift_plugins.sft`` runs them (one :class:`~swift_plugins.config.values.Issue` each, all at once,
exit 2)::

    environment: MAX_PIXELS: expected a positive integer, got 'abc' (unset it or give e.g. MAX_PIXELS=1003520)
    configs/x.yaml:4: model.model: models/m: no config.json in the folder (give the checkpoint folder itself, ...)
    configs/x.yaml:9: custom.train_jsonl: data/a.jsonl: empty (no record, only blank lines or nothing); ...
    configs/x.yaml:12: training.global_max_length: 300000 is above the model's context (max_position_embeddings 262144 ...)
    configs/x.yaml:15: training.output_dir: out is a file, not a folder (give a folder path)

:func:`preview_issues` runs for ``--print_config`` / ``--export_flat`` too (a preview that
passes must not fail at launch); :func:`run_issues` for a run (it may create the output folders).
"""
from __future__ import annotations

import os
from typing import List, Mapping, Optional

from swift_plugins.checks import (env_problems, jsonl_problems, model_context_length, model_dir_problem,
                                  writable_dir_problem, writable_file_problem)
from swift_plugins.config.resolve import ResolvedConfig
from swift_plugins.config.values import Issue

__all__ = ["preview_issues", "run_issues"]


def preview_issues(environ: Mapping[str, str], export_flat: Optional[str] = None) -> List[Issue]:
    """The ``MAX_PIXELS``-style overrides ms-swift reads with ``int()`` while loading the template, and
    the ``--export_flat`` file's place."""
    issues = [Issue("environment", *problem[len("environment: "):].split(": ", 1)) for problem in env_problems(environ)]
    problem = export_flat and writable_file_problem("--export_flat", export_flat)
    if problem:
        issues.append(Issue("command line", "--export_flat", problem[len("--export_flat: "):]))
    return issues


def run_issues(resolved: ResolvedConfig) -> List[Issue]:
    """Model folder, data files, context length and output folders of a run (the paths exist: ``missing_paths``)."""
    issues = []

    def add(dotted: str, problem) -> None:
        if problem:  # the checks' "dotted: what is wrong (fix)" -> the key's file:line, the key, the rest
            issues.append(Issue(resolved.where.get(dotted, resolved.sources.get(dotted, "config")), dotted,
                                problem[len(dotted) + 2:] if problem.startswith(dotted + ": ") else problem))

    model = resolved.config.model.model
    if model and os.path.isdir(model):
        add("model.model", model_dir_problem("model.model", model))
    for dotted in ("custom.train_jsonl", "custom.val_jsonl"):
        paths = resolved.value(dotted)
        paths = [paths] if isinstance(paths, str) else list(paths or [])
        for problem in jsonl_problems(dotted, [p for p in paths if os.path.exists(p)]):
            add(dotted, problem)
    training = resolved.config.training
    context = model_context_length(model) if model and os.path.isdir(model) else None
    if training.packing and context and training.global_max_length and training.global_max_length > context:
        add("training.global_max_length",
            f"{training.global_max_length} is above the model's context (max_position_embeddings {context} in "
            f"{model}/config.json); give at most {context}")
    create = not issues  # made and probed only when nothing else stops the run: a refusal leaves no folder
    for dotted in ("training.output_dir", "training.logging_dir", "data.length_cache_dir"):
        value = resolved.value(dotted)
        if value:
            add(dotted, writable_dir_problem(dotted, value, create=create))
    return issues

