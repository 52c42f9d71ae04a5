"""swift_plugins.files: atomic writes, digests, line offsets."""
import os

import pytest

from swift_plugins.files import line_offsets, read_line


def test_line_offsets_index_every_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a":1}\n\n{"b":22}\n')
    offsets = line_offsets(path)
    assert read_line(path, offsets, 1) == b'{"a":1}\n' and read_line(path, offsets, 3) == b'{"b":22}\n'


def test_staged_files_arrive_together_or_not_at_all(tmp_path):
    from swift_plugins.files import staged_files

    (tmp_path / "keep.md").write_text("k")
    with staged_files(tmp_path, ".s-") as stage:
        open(f"{stage}/a.json", "w").write("1")
        open(f"{stage}/b.json", "w").write("2")
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".s-")) == ["keep.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "keep.md"]
    with pytest.raises(RuntimeError):
        with staged_files(tmp_path / "new", ".s-") as stage:
            open(f"{stage}/c.json", "w").write("3")
            raise RuntimeError
    assert list((tmp_path / "new").iterdir()) == []


def test_probe_writable_makes_the_folder_and_leaves_nothing(tmp_path):
    from swift_plugins.files import probe_writable

    probe_writable(tmp_path / "a" / "b")
    assert list((tmp_path / "a" / "b").iterdir()) == []
    with pytest.raises(OSError):
        probe_writable("/sys/swiftpack-edge-check")


def test_scratch_file_holds_the_bytes_for_the_block_only():
    from swift_plugins.files import scratch_file

    with scratch_file(b"state") as path:
        assert open(path, "rb").read() == b"state" and oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert not os.path.exists(path)
