"""Exact Qwen-VL sample lengths (text + image tokens) without decoding a single image.

    record --width/height--> image_rule.ImageTokenRule --> image tokens  (the training path's resize)
           --conversation--> counter.LengthCounter     --> text tokens   (template frame + answer)
    messages record --chat.ChatFrame (the template's chat layout) + header sizes--> text + image tokens
    JSONL  --dataset.count_dataset (both kinds, parallel, self-checking, cached by content)--> per-record arrays

Pure: the tokenizer is HF ``tokenizers`` (Rust); the template frames come from
``swift_plugins.training.calibration``, which encodes calibration rows with ms-swift once.
"""
from swift_plugins.lengths.chat import ChatFrame
from swift_plugins.lengths.counter import DetectionAnswerCounter, LengthCounter, SampleLength
from swift_plugins.lengths.dataset import (KIND_CODES, DatasetLengths, count_dataset, messages_record_length,
                                           record_length, record_text_tokens)
from swift_plugins.lengths.image_rule import ImageTokenRule

__all__ = ["KIND_CODES", "ChatFrame", "DatasetLengths", "DetectionAnswerCounter", "ImageTokenRule", "LengthCounter",
           "SampleLength", "count_dataset", "messages_record_length", "record_length", "record_text_tokens"]
