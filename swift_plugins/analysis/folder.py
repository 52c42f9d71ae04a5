"""One analysis folder holds one analysis: written together, replaced whole, checked by every reader.

``analyze_token_lengths.py --output_dir D`` never writes its outputs one by one into ``D``::

    1. clear D: analysis_manifest.json first, then the earlier outputs and every file made from them
       (figures, FULL_RESULTS_SUMMARY.md, ... listed in derived_outputs.json by the visualizer)
    2. write every output into D/.analysis-staging-XXXX/
    3. move them into D, then write D/analysis_manifest.json last: {run_id, files: {name: digest}}

So an interrupted or failed run leaves no analysis in ``D`` (never an old one with new files in
it), and a complete re-run leaves nothing of the earlier one. Readers (the visualizer, the
migration) call :func:`check_analysis` through ``load_analysis``: a folder without the manifest,
or with a file whose bytes are not the ones the manifest names, is refused in one line::

    error: D: analysis_manifest.json missing: these files are not one complete analysis (an
           interrupted or failed run, or a copy from elsewhere); re-run scripts/analyze_token_lengths.py --output_dir D

Cost: one blake2b pass over the outputs when written and when read (sample_stats.jsonl is the
largest, one short line per record).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from typing import Iterable, List

from swift_plugins.errors import UserError
from swift_plugins.files import atomic_write_text, file_digest, staged_files

__all__ = ["ANALYSIS_OUTPUTS", "DERIVED", "MANIFEST", "check_analysis", "clear_analysis", "record_derived",
           "reanalyze_hint", "staged_analysis"]

MANIFEST = "analysis_manifest.json"
DERIVED = "derived_outputs.json"
ANALYSIS_OUTPUTS = ("dataset_stats.json", "sample_stats.jsonl", "packing_simulations.json", "recommendations.json",
                    "skipped_records.jsonl", "analysis_full.log")
STAGING_PREFIX = ".analysis-staging-"


def reanalyze_hint(folder: str) -> str:
    return f"re-run scripts/analyze_token_lengths.py --output_dir {folder}"


def clear_analysis(folder: str) -> List[str]:
    """Remove the analysis in ``folder`` (manifest first) and every file derived from it; returns the removed paths.

    Files of the folder that no analysis wrote (a README, configs) are left alone.
    """
    removed = []
    derived = _read_derived(folder)
    for path in [os.path.join(folder, MANIFEST)] + [os.path.join(folder, n) for n in ANALYSIS_OUTPUTS] + derived:
        if os.path.isfile(path):
            os.unlink(path)
            removed.append(path)
    for path in derived:  # a figures folder left empty goes too
        parent = os.path.dirname(path)
        if parent != os.path.abspath(folder) and os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
    if os.path.isfile(os.path.join(folder, DERIVED)):
        os.unlink(os.path.join(folder, DERIVED))
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        if name.startswith(STAGING_PREFIX):  # left by a killed run
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    return removed


@contextlib.contextmanager
def staged_analysis(folder: str):
    """Clear ``folder``, yield a staging folder inside it; on success move its files in and write the manifest."""
    os.makedirs(folder, exist_ok=True)
    clear_analysis(folder)
    with staged_files(folder, STAGING_PREFIX) as stage:
        yield stage
        files = {name: file_digest(os.path.join(stage, name)) for name in sorted(os.listdir(stage))}
    run_id = hashlib.blake2b(json.dumps(files, sort_keys=True).encode(), digest_size=8).hexdigest()
    atomic_write_text(os.path.join(folder, MANIFEST), json.dumps({"run_id": run_id, "files": files}, indent=2) + "\n")


def check_analysis(folder: str) -> dict:
    """The manifest of the complete analysis in ``folder``; a UserError (one line, with the fix) when its
    files do not belong together: no manifest, a listed file missing, or a file's bytes changed."""
    path = os.path.join(folder, MANIFEST)
    hint = reanalyze_hint(folder)
    if not os.path.isfile(path):
        raise UserError(f"{folder}: {MANIFEST} missing: these files are not one complete analysis (an interrupted "
                        f"or failed run, or an older version's outputs); {hint}")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        files, run_id = dict(manifest["files"]), str(manifest["run_id"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a manifest this project wrote; {hint}") from None
    for name, digest in sorted(files.items()):
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            raise UserError(f"{file}: missing, but analysis run {run_id} wrote it (the folder no longer holds one "
                            f"analysis); {hint}")
        if file_digest(file) != digest:
            raise UserError(f"{file}: changed since analysis run {run_id} wrote the folder (its files no longer "
                            f"belong together); {hint}")
    return manifest


def record_derived(folder: str, paths: Iterable[str]) -> None:
    """Note files made from the analysis in ``folder`` (figures, summary): a re-analysis removes them."""
    root = os.path.abspath(folder)
    listed = [_stored(p, root) for p in _read_derived(folder)]
    for p in map(os.path.abspath, paths):
        if _stored(p, root) not in listed:
            listed.append(_stored(p, root))
    atomic_write_text(os.path.join(folder, DERIVED), json.dumps(listed, indent=2) + "\n")


def _stored(path: str, root: str) -> str:
    """Inside the folder: relative (a copied folder names its own figures); elsewhere: absolute."""
    return os.path.relpath(path, root) if os.path.commonpath([path, root]) == root else path


def _read_derived(folder: str) -> List[str]:
    try:
        with open(os.path.join(folder, DERIVED), encoding="utf-8") as f:
            listed = json.load(f)
    except (OSError, ValueError):
        return []
    root = os.path.abspath(folder)
    return [os.path.join(root, p) for p in listed if isinstance(p, str)] if isinstance(listed, list) else []
