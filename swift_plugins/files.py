"""Files: the one atomic writer of results and caches, content digests, and line offsets of a JSONL.

Every output of this project (analysis JSON, reports, plans, caches, converted data, figures) is
written through :func:`atomic_open`: a temporary file next to the target, renamed onto it when
complete, so a reader sees the old file or the whole new one, never a half-written one::

    atomic_write_text("out/plan.json", text)
      -> out/.plan.json.k3j2x1.tmp   (written, flushed)
      -> os.replace -> out/plan.json (atomic on POSIX within one file system)

Random access to records: :func:`line_offsets` maps line numbers to byte offsets once, so
training reads record 7,341 with one ``seek`` instead of holding the file in memory.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import shutil
import tempfile

import numpy as np

__all__ = ["atomic_dir", "atomic_open", "atomic_write_bytes", "atomic_write_text", "file_digest", "line_offsets",
           "probe_writable", "read_line", "scratch_file", "staged_files"]


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", **kwargs):
    """Open a temporary file next to ``path``; on success ``os.replace`` it onto ``path``
    (readers never see a partial file), on error remove it. ``f.name`` is the temporary file's
    path, so a writer can check what it wrote (e.g. resolve a YAML with relative ``extends``)
    before it replaces ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path):
    """Build a folder under a temporary name next to ``path``; on success it replaces ``path``
    (a reader sees the old folder or the whole new one), on error it is removed."""
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_files(folder, prefix: str = ".staging-"):
    """A staging folder inside ``folder``; when the block ends without error every file written there
    moves into ``folder`` (``os.replace`` each, same file system), else the staging folder is removed.
    Used where ``folder`` holds other files too (an analysis folder with a README), so
    :func:`atomic_dir` cannot replace it whole."""
    os.makedirs(folder, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=prefix, dir=folder)
    try:
        yield stage
        for name in sorted(os.listdir(stage)):
            os.replace(os.path.join(stage, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def scratch_file(data: bytes):
    """A private temporary file holding ``data`` for the block (its path yielded), removed after."""
    fd, path = tempfile.mkstemp(prefix="swiftpack-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        os.unlink(path)


def probe_writable(folder) -> None:
    """Make ``folder`` and write + remove a probe file in it; an ``OSError`` says why it cannot be written."""
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-check-")
    os.close(fd)
    os.unlink(tmp)


def file_digest(path) -> str:
    """blake2b-128 hex digest of a file's bytes (cache keys: any change of the data gives a new key)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def line_offsets(path) -> np.ndarray:
    """Byte offset of the start of every line (index = line number - 1).

    ``b"a\\nbb\\n"`` -> ``[0, 2, 5]`` (the last entry is the end of the file: an empty line 3).
    """
    raw = np.fromfile(os.fspath(path), dtype=np.uint8)
    ends = np.flatnonzero(raw == ord("\n"))
    return np.concatenate([[0], ends + 1]).astype(np.int64)


def read_line(path, offsets: np.ndarray, line: int) -> bytes:
    """The raw bytes of line ``line`` (1-based, with its newline) of ``path``."""
    with open(path, "rb") as f:
        f.seek(int(offsets[line - 1]))
        return f.readline()
