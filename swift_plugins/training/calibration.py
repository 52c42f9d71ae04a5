"""Template calibration: what the pure length counter needs from ms-swift, measured once.

The counter (``swift_plugins.lengths``) is pure; four facts come from the real template::

    tokenizer        template.processor.tokenizer.backend_tokenizer (shared, not re-parsed)
    image rule       the model family's (swift_plugins.families.image_rule: resize patch, merge,
                     pixel limits with ms-swift's IMAGE_MIN/MAX_TOKEN_NUM, MIN/MAX_PIXELS
                     overrides) for the processor's patch / merge and the template's max_pixels,
                     checked against what ms-swift set up in qwen-vl-utils in this process
    frames           len(template.encode(calibration row)) - what the counter counts itself,
                     per distinct (user text, image count), with 64x64 in-memory images
    chat layout      for messages records (:func:`chat_frame`): the template meta's prefix /
                     system_prefix / prompt / chat_sep / suffix, replace_tag's image string and
                     the loss-scale layout read off the template; the fast count's constants
                     measured by encoding calibration rows; both counts then checked against
                     template.encode on awkward calibration rows. A template laid out otherwise
                     gives no layout (``counter.chat_error`` says why): LVIS records still count,
                     messages records are refused with that reason

:func:`load_counter` caches these (keyed by the model's tokenizer / processor / config files,
template, max_pixels, the resize environment variables, package versions and the counting code),
so a rerun of the analysis neither imports ms-swift nor loads the processor. Imports of ms-swift
happen inside the functions that need them.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from typing import Optional

from swift_plugins.families import Family, family_for_config, family_of_model, image_rule
from swift_plugins.files import atomic_write_text
from swift_plugins.lengths.chat import ChatFrame, content_pieces
from swift_plugins.lengths.counter import LengthCounter
from swift_plugins.lengths.dataset import CACHE_FORMAT, code_digest
from swift_plugins.lengths.image_rule import ImageTokenRule

__all__ = ["CHAT_PROBES", "LOSS_LAYOUTS", "THINK_PROBES", "RESIZE_ENV_VARS", "ChatLayoutError", "chat_frame", "counter_cache_key",
           "counter_from_template", "image_rule_from_template", "load_counter", "load_template", "measure_frame",
           "template_family"]

IMAGE_PAD_TOKEN = "<|image_pad|>"
CALIBRATION_IMAGE = (64, 64)  # in-memory calibration images: 4 tokens each for Qwen3-VL
# ms-swift LossScale base strategies -> loss scale of (frame text, history responses, last response
# and suffix); where neighbours differ ms-swift tokenizes them apart (swift/loss_scale/base.py).
LOSS_LAYOUTS = {"default": (0.0, 1.0, 1.0), "last_round": (0.0, 0.0, 1.0), "all": (1.0, 1.0, 1.0)}


def template_family(template) -> Family:
    """The family of the model a loaded ms-swift template was built for (its config.json ``model_type``)."""
    info = template.model_info
    return family_for_config({"model_type": info.config.model_type},
                             where=os.path.join(os.fspath(info.model_dir), "config.json"))


def image_rule_from_template(template) -> ImageTokenRule:
    """The family's rule (:func:`swift_plugins.families.image_rule`) for the template's processor,
    checked against what ms-swift set up in qwen-vl-utils and the template's image token id.

    ms-swift reads the resize environment into qwen-vl-utils once per process; a variable changed
    after that, or a second family loaded in the same process with ``MAX_PIXELS`` set, would make
    the two differ: that is a RuntimeError, never a silent miscount.
    """
    from qwen_vl_utils import vision_process as vp

    family = template_family(template)
    image_processor = template.processor.image_processor
    rule = image_rule(family, os.environ, processor_patch=int(image_processor.patch_size),
                      processor_merge=int(image_processor.merge_size), template_max_pixels=template.max_pixels)
    factor = rule.factor
    loaded = (int(vp.SPATIAL_MERGE_SIZE), int(vp.IMAGE_MIN_TOKEN_NUM) * factor ** 2,
              int(vp.IMAGE_MAX_TOKEN_NUM) * factor ** 2, float(vp.MAX_RATIO))
    expected = (rule.merge_size, rule.min_pixels, rule.max_pixels, rule.max_ratio)
    if loaded != expected:
        raise RuntimeError(f"qwen-vl-utils resizes with (merge, min_pixels, max_pixels, max_ratio) {loaded} in this "
                           f"process, the {family.title} rule under this environment says {expected}: set the resize "
                           f"variables ({', '.join(RESIZE_ENV_VARS)}) before the first model is loaded")
    if template.image_token_id != family.tokens.image_pad:
        raise RuntimeError(f"template {template.template_meta.template_type} expands image token id "
                           f"{template.image_token_id}, the {family.title} row says {family.tokens.image_pad}")
    return rule


def counter_from_template(template) -> LengthCounter:
    """A counter over the template's own Rust tokenizer (shared: parsing a 150k vocab costs ~0.1 s),
    measuring missing frames with the template, calibrated for messages records (:func:`chat_frame`)."""
    backend = template.processor.tokenizer.backend_tokenizer
    counter = LengthCounter(backend, image_rule_from_template(template),
                            measure_frame=functools.partial(measure_frame, template),
                            family=template_family(template).model_type)
    try:
        counter.chat = chat_frame(template, counter)
    except ChatLayoutError as e:  # LVIS records still count; messages records refuse with this reason
        counter.chat_error = str(e)
    return counter


def measure_frame(template, counter: LengthCounter, user_text: str, num_images: int) -> int:
    """Encode a calibration row with the real template and subtract what we count ourselves."""
    from PIL import Image

    probe = "x"  # a response whose count we know: tokens(probe) below
    images = [Image.new("RGB", (64, 64), (127, 127, 127)) for _ in range(num_images)]
    row = {"messages": [{"role": "user", "content": user_text}, {"role": "assistant", "content": probe}],
           "images": images}
    encoded = template.encode(row)
    image_tokens = num_images * counter.image_tokens(64, 64)
    pads = encoded["input_ids"].count(template.processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD_TOKEN))
    if pads != image_tokens:
        raise RuntimeError(f"calibration image gave {pads} image tokens, the resize rule says {image_tokens}: "
                           "the template's image path differs from ImageTokenRule")
    return len(encoded["input_ids"]) - counter.text_tokens([probe])[0] - image_tokens


class ChatLayoutError(RuntimeError):
    """The template lays out conversations in a way the messages counter does not model."""


def _u(text):
    return {"role": "user", "content": text}


def _a(text):
    return {"role": "assistant", "content": text}


def _s(text):
    return {"role": "system", "content": text}


# Calibration conversations. The first four give the fast count's constants (one turn; + system;
# + a round; + an image), each without a system prompt but the second: an empty system message,
# because a row with no system message gets the template's default one (Qwen2-VL, Qwen2.5-VL).
# All are then counted both ways and compared with template.encode, on awkward seams: leading /
# trailing spaces and newlines next to the chat markers, unicode (NFC composition, CJK), images
# first / last / adjacent, an empty user text, no system message (= the default, if any).
CHAT_PROBES = (
    (_s(""), _u("a"), _a("b")),
    (_s("s"), _u("a"), _a("b")),
    (_s(""), _u("a"), _a("b"), _u("c"), _a("d")),
    (_s(""), _u("<image>a"), _a("b")),
    (_u("a"), _a("b")),
    (_s("\n  Be brief. \n"), _u("\n\nLook <image>\n"), _a("\n\n dog \n"), _u("<image><image>"),
     _a("  nai\u0308ve café 日本語\t\n\n"), _u(""), _a(" ok")),
    (_u(" \n<image>x\n\n<image>"), _a("\n\n  [1, 2]")),
    (_s(""), _u("\u0301q  "), _a("a\n")),
)


# Templates that trim contents or prefix responses (Qwen3.5) are also checked on thinking blocks.
THINK_PROBES = (
    (_s(" sys \n"), _u("  q "), _a("\n<think>\n  why \n</think>\n\n\n ans \n")),
    (_u("<image> a"), _a("<think>r</think>x"), _u(" "), _a(" <think>\n\n</think>\n\ny ")),
)


def chat_frame(template, counter: LengthCounter) -> ChatFrame:
    """The template's chat layout for :meth:`LengthCounter.count_messages`, read off the template,
    its constants measured by encoding, checked on :data:`CHAT_PROBES`; ``ChatLayoutError`` if the
    template lays conversations out otherwise (a setting, a piece that is not text, a mismatch).

    qwen3_vl on the tiny model: prompt ``"<|im_start|>user\n{{QUERY}}<|im_end|>\n<|im_start|>assistant\n"``,
    heads ``"system\n"`` / ``"user\n"`` / ``"assistant\n"``, losses (0, 1, 1) and constants
    first_turn 8, next_turn 8, system 3, per_image 2.
    """
    meta = template.template_meta
    problems = _layout_problems(template)
    if problems:
        raise ChatLayoutError(f"template {meta.template_type}: " + "; ".join(problems))
    frame = _read_frame(template)
    rest = [_fast_rest(template, counter, frame, probe) for probe in CHAT_PROBES[:4]]
    frame = dataclasses.replace(frame, first_turn=rest[0], system=rest[1] - rest[0], next_turn=rest[2] - rest[0],
                                per_image=rest[3] - rest[0])
    _check_probes(template, counter, frame)
    return frame


def _layout_problems(template) -> list[str]:
    """The settings under which the template's layout is not the one :class:`ChatFrame` models (empty: none)."""
    meta = template.template_meta
    return [what for bad, what in [
        (not template.use_chat_template, "use_chat_template is off"),
        (template.template_backend != "swift", f"template_backend is {template.template_backend!r}"),
        (bool(meta.is_post_system), "the system prompt goes after the query (is_post_system)"),
        (bool(meta.auto_add_bos), "a BOS token is added (auto_add_bos)"),
        (not meta.support_multi_round, "the template keeps only the last round"),
        (bool(template.add_non_thinking_prefix and meta.non_thinking_prefix) and not _prefix_every_round(template),
         f"only the last round's response gets the prefix {meta.non_thinking_prefix!r}"),
        (not template._get_preserve_thinking(), "history responses lose their thinking part"),
        (_zero_loss_heads(template.loss_scale) is None or template.loss_scale.base_strategy not in LOSS_LAYOUTS,
         f"loss_scale {template._loss_scale!r} may split responses"),
        (meta.system_prefix is None, "the template has no system prompt"),
    ] if bad]


def _read_frame(template) -> ChatFrame:
    """The frame's texts, heads and losses read off the template (its constants still 0); ``ChatLayoutError``
    where a piece does not start (the image string: end) with an added token, so it would merge with content."""
    from PIL import Image
    from swift.template.template_inputs import StdTemplateInputs

    meta = template.template_meta
    pieces = {name: _text(getattr(meta, name), name) for name in ("prefix", "system_prefix", "prompt", "chat_sep",
                                                                   "suffix")}
    probe_inputs = StdTemplateInputs(messages=[], images=[Image.new("RGB", CALIBRATION_IMAGE, (127, 127, 127))])
    image = _text(template.replace_tag("image", 0, probe_inputs), "replace_tag('image')")
    image_pad = template.processor.tokenizer.convert_ids_to_tokens(template.image_token_id)
    added = [t.content for t in template.processor.tokenizer.backend_tokenizer.get_added_tokens_decoder().values()]
    system_before, system_after = _around(pieces["system_prefix"], "{{SYSTEM}}")
    query_before, query_after = _around(pieces["prompt"], "{{QUERY}}")
    cuts = {"after {{SYSTEM}}": system_after, "after {{QUERY}}": query_after, "chat_sep": pieces["chat_sep"],
            "suffix": pieces["suffix"], "the image string": image}
    not_cut = [name for name, text in cuts.items() if not text.startswith(tuple(added))]
    if not image.endswith(tuple(added)) or image_pad not in image:
        not_cut.append("the image string's end")
    if not_cut:
        raise ChatLayoutError(f"template {meta.template_type}: no added token starts {', '.join(not_cut)}, so "
                              "the text next to it would tokenize together with the content")
    frame_loss, history_loss, last_loss = LOSS_LAYOUTS[template.loss_scale.base_strategy]
    return ChatFrame(**pieces, image=image, image_pad=image_pad, default_system=meta.default_system,
                     frame_loss=frame_loss, history_loss=history_loss, last_loss=last_loss,
                     system_head=_head(system_before, added), user_head=_head(query_before, added),
                     assistant_head=_head(query_after, added), trim=_trims_contents(template),
                     response_prefix=(meta.non_thinking_prefix or "") if template.add_non_thinking_prefix else "",
                     zero_loss_heads=_zero_loss_heads(template.loss_scale))


def _check_probes(template, counter: LengthCounter, frame: ChatFrame) -> None:
    """Both counts of ``frame`` equal ``template.encode`` on every calibration conversation (the
    thinking ones too where the template trims or prefixes), else ``ChatLayoutError`` naming it."""
    check = LengthCounter(template.processor.tokenizer.backend_tokenizer, counter.rule, chat=frame)
    for probe in CHAT_PROBES + (THINK_PROBES if frame.trim or frame.response_prefix else ()):
        total, n = _encoded(template, counter, probe)
        sizes = [CALIBRATION_IMAGE] * n
        fast, exact = check.count_messages(probe, sizes), check.count_messages_exact(probe, sizes)
        if not fast.total_tokens == exact.total_tokens == total:
            raise ChatLayoutError(f"template {template.template_meta.template_type}: calibration conversation "
                                  f"{list(probe)} encodes to {total} tokens, counted {fast.total_tokens} (fast) / "
                                  f"{exact.total_tokens} (exact)")


def _zero_loss_heads(loss_scale) -> Optional[tuple]:
    """The response heads a loss scale puts at loss 0: () for a base strategy alone, ms-swift's
    ``ignore_empty_think`` regexes for ``<base>+ignore_empty_think`` (what ms-swift picks for hybrid
    thinking templates such as Qwen3.5's); None for any other loss scale (it may split responses)."""
    from swift.loss_scale import LossScale
    from swift.loss_scale.base import ConcatLossScale
    from swift.loss_scale.other import IgnoreEmptyThinkLossScale

    if type(loss_scale) is LossScale:
        return ()
    # "default+ignore_empty_think" is one IgnoreEmptyThinkLossScale with base_strategy "default"
    parts = getattr(loss_scale, "loss_scales", None) if type(loss_scale) is ConcatLossScale else [loss_scale]
    if not parts or any(type(p) not in (LossScale, IgnoreEmptyThinkLossScale) for p in parts):
        return None
    heads = [k for p in parts if type(p) is IgnoreEmptyThinkLossScale for k, v in p.loss_scale_map.items()]
    if any(list(p.loss_scale_map[k]) != [0.0] for p in parts if type(p) is IgnoreEmptyThinkLossScale
           for k in p.loss_scale_map):
        return None
    return tuple(k for k in heads if k.startswith("^"))


def _prefix_every_round(template) -> bool:
    """ms-swift's ``_add_non_thinking_prefix``: every response gets it while training with a loss on every
    round (or a meta that preserves thinking); only the last round's otherwise."""
    return bool((template.is_training and template.loss_scale.base_strategy != "last_round")
                or template.template_meta.preserve_thinking)


def _trims_contents(template) -> bool:
    """Whether the template trims message contents (Qwen3.5's): a padded conversation encodes as the bare one."""
    padded, bare = (template.encode({"messages": [_u(q), _a(a)]})["input_ids"] for q, a in ((" a\n", "\n b "),
                                                                                          ("a", "b")))
    return padded == bare


def _text(contexts, name: str) -> str:
    if contexts is None:
        return ""
    if not all(isinstance(c, str) for c in contexts):
        raise ChatLayoutError(f"template meta {name} holds token ids, not text: {contexts!r}")
    return "".join(contexts)  # ms-swift joins neighbouring strings of equal loss before tokenizing


def _around(text: str, placeholder: str) -> tuple[str, str]:
    if text.count(placeholder) != 1:
        raise ChatLayoutError(f"expected {placeholder} once in {text!r}")
    before, after = text.split(placeholder)
    return before, after


def _head(text: str, added: list) -> str:
    """The text after the last added token: it tokenizes together with what follows."""
    ends = [text.rfind(t) + len(t) for t in added if t in text]
    if not ends:
        raise ChatLayoutError(f"no added token in {text!r} before the content")
    return text[max(ends):]


def _encoded(template, counter: LengthCounter, messages) -> tuple[int, int]:
    """(input_ids length, number of images) of a calibration conversation with 64x64 in-memory images."""
    from PIL import Image

    n = sum(m["content"].count("<image>") for m in messages)
    row = {"messages": [dict(m) for m in messages],
           "images": [Image.new("RGB", CALIBRATION_IMAGE, (127, 127, 127)) for _ in range(n)]}
    ids = template.encode(row)["input_ids"]
    if ids.count(template.image_token_id) != n * counter.image_tokens(*CALIBRATION_IMAGE):
        raise RuntimeError(f"calibration images gave {ids.count(template.image_token_id)} image tokens, the resize "
                           f"rule says {n} x {counter.image_tokens(*CALIBRATION_IMAGE)}: the template's image path "
                           "differs from ImageTokenRule")
    return len(ids), n


def _fast_rest(template, counter: LengthCounter, frame: ChatFrame, messages) -> int:
    """Tokens of an encoded calibration conversation outside the fast count's content pieces and images."""
    total, n = _encoded(template, counter, messages)
    pieces, _ = content_pieces(frame, messages)
    return total - sum(counter.text_tokens(pieces)) - n * counter.image_tokens(*CALIBRATION_IMAGE)


def load_template(model_path, *, model_type: Optional[str] = None, template_type: Optional[str] = None,
                  max_pixels: Optional[int] = None):
    """An ms-swift template in train mode for ``model_path`` (a local folder; no hub access, no weights);
    ``model_type`` / ``template_type`` None: the family's (:func:`swift_plugins.families.family_of_model`)."""
    from swift import get_model_processor, get_template

    family = family_of_model(model_path)
    model_type = model_type or family.swift_model_type
    template_type = template_type or family.template
    _, processor = get_model_processor(os.fspath(model_path), model_type=model_type, load_model=False,
                                       download_model=False)
    template = get_template(processor, template_type=template_type, max_pixels=max_pixels)
    template.set_mode("train")
    return template


# Environment variables ms-swift reads into qwen-vl-utils (model/models/qwen.py) or the template:
# they change image token counts, so they are part of the counter's cache key.
RESIZE_ENV_VARS = ("MAX_PIXELS", "MIN_PIXELS", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM", "IMAGE_FACTOR",
                   "SPATIAL_MERGE_SIZE", "MAX_RATIO")
_MODEL_FILES = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "config.json",
                "chat_template.jinja", "chat_template.json")


def counter_cache_key(model_path, *, model_type: Optional[str], template_type: Optional[str],
                      max_pixels: Optional[int], user_texts: tuple) -> str:
    """Everything the template-derived counter state depends on, hashed without importing ms-swift."""
    import importlib.metadata as md

    h = hashlib.blake2b(digest_size=20)
    for name in _MODEL_FILES:
        p = os.path.join(os.fspath(model_path), name)
        h.update(name.encode() + (pathlib.Path(p).read_bytes() if os.path.exists(p) else b"<absent>"))
    parts = {"family": family_of_model(model_path).model_type, "model_type": model_type, "template": template_type,
             "max_pixels": max_pixels,
             "user_texts": list(user_texts), "env": {k: os.environ.get(k) for k in RESIZE_ENV_VARS},
             "versions": [md.version(p) for p in ("ms-swift", "qwen-vl-utils", "transformers", "tokenizers")],
             "code": code_digest(), "format": CACHE_FORMAT}
    h.update(json.dumps(parts, sort_keys=True).encode())
    return h.hexdigest()


def load_counter(model_path, *, model_type: Optional[str] = None, template_type: Optional[str] = None,
                 max_pixels: Optional[int] = None, user_texts: tuple = (), cache_dir=None,
                 clear_cache: bool = False) -> LengthCounter:
    """A LengthCounter calibrated for ``user_texts`` (one image each), from cache when possible.

    The cache entry (tokenizer, image rule, calibrated frames, chat layout) is keyed by the model's family,
    its tokenizer/processor/config files, template type, max_pixels, the resize environment variables
    and package versions, so a rerun skips importing ms-swift and loading the processor.
    """
    path = None
    if cache_dir is not None:
        key = counter_cache_key(model_path, model_type=model_type, template_type=template_type,
                                max_pixels=max_pixels, user_texts=tuple(user_texts))
        path = pathlib.Path(cache_dir) / f"counter-{key}.json"
        if clear_cache and path.exists():
            path.unlink()
        if path.exists():
            state = json.loads(path.read_text(encoding="utf-8"))
            return LengthCounter.from_state({
                "tokenizer_json": state["tokenizer_json"], "rule": ImageTokenRule(**state["rule"]),
                "frames": {(t, n): v for t, n, v in state["frames"]},
                "chat": None if state["chat"] is None else ChatFrame(**state["chat"]),
                "chat_error": state["chat_error"], "family": state["family"]})
    template = load_template(model_path, model_type=model_type, template_type=template_type, max_pixels=max_pixels)
    counter = counter_from_template(template)
    state = counter.state((t, 1) for t in user_texts)
    if path is not None:
        atomic_write_text(path, json.dumps({
            "tokenizer_json": state["tokenizer_json"], "rule": state["rule"].to_dict(),
            "frames": [[t, n, v] for (t, n), v in sorted(state["frames"].items())],
            "chat": None if state["chat"] is None else state["chat"].to_dict(), "chat_error": state["chat_error"],
            "family": state["family"]}))
    return counter
