"""Records: the JSONL schema and its one validator, reading with raise/skip, record -> conversation.

    train.jsonl --iter_records (validate; raise or skip + report)--> (line, record)
                --to_swift_row (order objects, emit coordinates)--> {"messages": [...], "images": [...]}
                --split_record (dense scenes, when a length limit asks)--> pieces of the same image

Pure Python (PIL reads image headers only). The LVIS converter (``data.lvis_convert``) and the
generators of the bundled sample and the synthetic set (``data.synthetic``) write such files.
"""
from swift_plugins.data.conversation import (DEFAULT_PROMPT, DEFAULT_PROMPT_NORM1000, EMIT_NORMS, OBJECT_ORDERINGS,
                                             ConversationOptions, emit_coords, order_objects, to_swift_row)
from swift_plugins.data.reader import (RAW_REPORT_CHARS, ReadSummary, RecordStream, SkippedRecord, dump_record,
                                       iter_records, skipped_record, write_skip_report)
from swift_plugins.data.image_size import MAX_ASPECT_RATIO, smart_resize
from swift_plugins.data.records import ON_ERROR_CHOICES, OptionNotImplementedError, RecordError, parse_record, validate_record
from swift_plugins.data.split import split_record

__all__ = [
    "DEFAULT_PROMPT", "DEFAULT_PROMPT_NORM1000", "EMIT_NORMS", "MAX_ASPECT_RATIO", "OBJECT_ORDERINGS",
    "ON_ERROR_CHOICES", "RAW_REPORT_CHARS", "ConversationOptions", "OptionNotImplementedError", "ReadSummary",
    "RecordError", "RecordStream", "SkippedRecord", "dump_record", "emit_coords", "iter_records", "order_objects",
    "parse_record", "skipped_record", "smart_resize", "split_record", "to_swift_row", "validate_record",
    "write_skip_report",
]
