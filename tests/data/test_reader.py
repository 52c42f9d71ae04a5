"""swift_plugins.data.reader: raise at the first bad record, or skip each with a report line."""
import json

import pytest

from helpers import GOOD, with_, write_lines
from swift_plugins.data import RecordError, iter_records, skipped_record

def test_raise_stops_at_first_bad_record_after_yielding_earlier_ones(folder):
    path = write_lines(folder, [GOOD, with_(objects=[]), with_(width=0)])
    seen = []
    with pytest.raises(RecordError) as info:
        for n, rec in iter_records(path):
            seen.append(n)
    assert seen == [1] and info.value.line == 2 and info.value.kind == "no_objects"


def test_skip_policy_report_and_summary(folder):
    long_bad = with_(objects=[{"desc": "x" * 300, "poly": [1, 2, 3]}])
    path = write_lines(folder, [GOOD, "", "   ", "{oops", GOOD, long_bad, with_(objects=[])])
    report = folder / "out" / "skipped.jsonl"
    stream = iter_records(path, on_error="skip", report_path=report)
    assert stream.summary.complete is False
    got = [(n, r) for n, r in stream]
    assert [n for n, _ in got] == [1, 5] and got[0][1] == GOOD
    s = stream.summary
    assert s.to_dict() == {"path": str(path), "read": 5, "valid": 2, "skipped": 3, "blank_lines": 2,
                           "skipped_by_kind": {"invalid_json": 1, "no_objects": 1, "poly_odd_length": 1},
                           "report_path": str(report), "complete": True}
    assert s.log_line() == (f"{path}: samples in 5 = valid 2 + skipped 3 (invalid_json 1, no_objects 1, "
                            f"poly_odd_length 1); 2 blank lines (not records); skip report: {report}")
    rows = [json.loads(x) for x in report.read_text().splitlines()]
    raw_long = json.dumps(long_bad)
    assert rows == [
        {"path": str(path), "line": 4, "field": "<json>", "kind": "invalid_json",
         "reason": "invalid JSON: Expecting property name enclosed in double quotes at column 2 "
                   "(write exactly one JSON object per line)", "raw": "{oops"},
        {"path": str(path), "line": 6, "field": "objects[0].poly", "kind": "poly_odd_length",
         "reason": "odd number of values (3); a polygon is x1, y1, x2, y2, ... (give every point both coordinates)",
         "raw": raw_long[:200] + f"...(+{len(raw_long) - 200} chars)"},
        {"path": str(path), "line": 7, "field": "objects", "kind": "no_objects",
         "reason": "empty list (a record needs at least one object; drop the record)", "raw": json.dumps(with_(objects=[]))},
    ]
    assert s.read == s.valid + s.skipped


def test_skip_report_written_even_when_nothing_skipped(folder):
    path = write_lines(folder, [GOOD, GOOD])
    empty = iter_records(path, on_error="skip", report_path=folder / "empty.jsonl")
    assert not (folder / "empty.jsonl").exists()  # written when the file has been read to the end
    assert len(list(empty)) == 2 and (folder / "empty.jsonl").read_text() == ""


def test_skipped_record_cuts_the_raw_line_and_marks_the_cut():
    e = RecordError("t.jsonl", 3, "width", "missing (add it)", "missing_size")
    short = skipped_record(e, b'{"a": 1}\r\n')
    assert short.to_dict() == {"path": "t.jsonl", "line": 3, "field": "width", "kind": "missing_size",
                               "reason": "missing (add it)", "raw": '{"a": 1}'}
    assert skipped_record(e, "y" * 200).raw == "y" * 200
    assert skipped_record(e, "y" * 201).raw == "y" * 200 + "...(+1 chars)"


def test_on_error_choice_is_checked(folder):
    with pytest.raises(ValueError, match=r"on_error: 'ignore' is not one of \('raise', 'skip'\)"):
        iter_records(folder / "x.jsonl", on_error="ignore")


