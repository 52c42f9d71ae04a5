"""swift_plugins.files: atomic writes, digests, line offsets."""
from swift_plugins.files import line_offsets, read_line


def test_line_offsets_index_every_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a":1}\n\n{"b":22}\n')
    offsets = line_offsets(path)
    assert read_line(path, offsets, 1) == b'{"a":1}\n' and read_line(path, offsets, 3) == b'{"b":22}\n'
