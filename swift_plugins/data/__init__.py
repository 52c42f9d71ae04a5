"""Records: the JSONL schemas and their one validator, reading with raise/skip, record -> conversation.

    train.jsonl --iter_records (record_kind: lvis | messages; validate; raise or skip + report)--> (line, record)
                --swift_row: lvis -> to_swift_row (order objects, emit coordinates)
                             messages -> messages_to_swift_row (the conversation, absolute image paths)
                --> {"messages": [...], "images": [...]}
                --split_record (LVIS dense scenes, when a length limit asks)--> pieces of the same image

Pure Python (PIL reads image headers only). The LVIS converter (``data.lvis_convert``) and the
generators of the bundled sample and the synthetic set (``data.synthetic``) write such files.
"""
from swift_plugins.data.conversation import (DEFAULT_PROMPT, DEFAULT_PROMPT_NORM1000, EMIT_NORMS, OBJECT_ORDERINGS,
                                             ConversationOptions, emit_coords, order_objects, swift_row, to_swift_row)
from swift_plugins.data.messages import image_paths, messages_image_sizes, messages_to_swift_row
from swift_plugins.data.reader import (RAW_REPORT_CHARS, ReadSummary, RecordStream, SkippedRecord, dump_record,
                                       iter_records, skipped_record, write_skip_report)
from swift_plugins.data.image_size import MAX_ASPECT_RATIO, smart_resize
from swift_plugins.data.records import (ON_ERROR_CHOICES, RECORD_FORMATS, OptionNotImplementedError, RecordError,
                                        parse_record, record_kind, validate_record)
from swift_plugins.data.split import split_record

__all__ = [
    "DEFAULT_PROMPT", "DEFAULT_PROMPT_NORM1000", "EMIT_NORMS", "MAX_ASPECT_RATIO", "OBJECT_ORDERINGS",
    "ON_ERROR_CHOICES", "RAW_REPORT_CHARS", "RECORD_FORMATS", "ConversationOptions", "OptionNotImplementedError",
    "ReadSummary", "RecordError", "RecordStream", "SkippedRecord", "dump_record", "emit_coords", "image_paths",
    "iter_records", "messages_image_sizes", "messages_to_swift_row", "order_objects", "parse_record",
    "record_kind", "skipped_record", "smart_resize", "split_record", "swift_row", "to_swift_row",
    "validate_record", "write_skip_report",
]
