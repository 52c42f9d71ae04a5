"""What each tiny Qwen-VL family checkpoint is: config.json, processors, chat template, tokenizer ids.

One :class:`TinyFamily` per ``model_type``; :mod:`swift_plugins.dev.tiny_model` writes them. Every
family is tiny (text hidden 64, 2 layers, head 16; vision hidden 32, depth 2) but shaped like the
real model where token counts and packing depend on it:

    model_type      architecture                          patch  vision tower                   text
    qwen2_vl        Qwen2VLForConditionalGeneration       14     plain blocks                   dense
    qwen2_5_vl      Qwen2_5_VLForConditionalGeneration    14     windows of 56 px + full block  dense
    qwen3_vl        Qwen3VLForConditionalGeneration       16     DeepStack                      dense
    qwen3_vl_moe    Qwen3VLMoeForConditionalGeneration    16     DeepStack                      4 experts, top-2
    qwen3_5         Qwen3_5ForConditionalGeneration       16     plain blocks                   linear x3 + full
    qwen3_5_moe     Qwen3_5MoeForConditionalGeneration    16     plain blocks                   hybrid, 4 experts top-2

Image processors carry each family's real patch, merge and temporal patch sizes and pixel limits
(Qwen2/2.5-VL: 3,136..12,845,056 pixels, CLIP mean/std; Qwen3-VL, Qwen3.5: 65,536..16,777,216, mean/std 0.5).
Qwen3.5 (and Qwen3.6, same architectures) has a 248,320-row vocabulary with its specials from
248044 (``<|image_pad|>`` 248056): the tiny one keeps the real Qwen BPE below 151,643, unreachable
placeholders up to 248,043, and Qwen3.5's split regex (combining marks join letters). Its hybrid
decoder has four layers, ``layer_types`` linear, linear, linear, full (Gated DeltaNet: 4-tap
convolution + recurrent state; the fourth layer gated full attention, head 32, a quarter rotary).
"""
from __future__ import annotations

import dataclasses

from swift_plugins.dev.tiny_tokenizer import QWEN3_5_SPLIT_PATTERN, QWEN_BPE_SIZE, QWEN_SPLIT_PATTERN, special_ids

DEFAULT_FAMILY = "qwen3_vl"
QWEN2_VOCAB = 151936  # embedding rows of Qwen2-VL-2B / Qwen2.5-VL-3B / Qwen3-VL

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
HALF = [0.5, 0.5, 0.5]
RESCALE = 0.00392156862745098


@dataclasses.dataclass(frozen=True)
class TinyFamily:
    """Everything that differs between two tiny checkpoints (see the module table)."""
    model_type: str
    architecture: str
    processor_class: str
    patch_size: int
    min_pixels: int
    max_pixels: int
    image_mean: list
    image_std: list
    text: dict  # text_config keys on top of TEXT_BASE
    vision: dict  # vision_config (complete)
    default_system: str | None = None  # inserted by the chat template when a conversation has none
    thinking: bool = False  # Qwen3.5 chat template: trimmed content, <think> generation prefix
    vocab_size: int = QWEN2_VOCAB
    first_special_id: int = QWEN_BPE_SIZE
    split_pattern: str = QWEN_SPLIT_PATTERN
    tokenizer_class: str = "Qwen2Tokenizer"
    video_processor_type: str = "Qwen2VLVideoProcessor"
    rope_theta: float = 1000000.0
    max_position_embeddings: int = 32768
    extra: dict = dataclasses.field(default_factory=dict)  # top-level config keys

    def ids(self) -> dict[str, int]:
        return special_ids(self.first_special_id)


TEXT_BASE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
             "dtype": "float32"}
QWEN3_VISION = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "in_channels": 3,
                "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 64,
                "num_position_embeddings": 2304, "hidden_act": "gelu_pytorch_tanh"}
QWEN3_ROPE = {"mrope_section": [4, 2, 2], "mrope_interleaved": True}
QWEN3_5_VOCAB, QWEN3_5_FIRST_SPECIAL = 248320, 248044
# Hybrid decoder: layer_types linear, linear, linear, full; the full layer has head 32 with a
# quarter rotary (8 dims = 4 pairs = mrope 2 + 1 + 1), as the real 256-head / 64-dim rotary.
QWEN3_5_TEXT = {"num_hidden_layers": 4, "head_dim": 32,
                "layer_types": ["linear_attention"] * 3 + ["full_attention"],
                "rope_parameters": {"mrope_section": [2, 1, 1], "mrope_interleaved": True,
                                    "partial_rotary_factor": 0.25},
                "linear_conv_kernel_dim": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
                "linear_num_key_heads": 2, "linear_num_value_heads": 4}
QWEN3_5_COMMON = dict(vocab_size=QWEN3_5_VOCAB, first_special_id=QWEN3_5_FIRST_SPECIAL,
                      split_pattern=QWEN3_5_SPLIT_PATTERN, tokenizer_class="Qwen3_5Tokenizer",
                      video_processor_type="Qwen3VLVideoProcessor", rope_theta=10000000.0,
                      max_position_embeddings=262144, thinking=True)

FAMILIES: dict[str, TinyFamily] = {f.model_type: f for f in (
    TinyFamily(
        "qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", 14, 3136, 12845056, CLIP_MEAN, CLIP_STD,
        text={"model_type": "qwen2_vl_text", "rope_parameters": {"mrope_section": [4, 2, 2]},
              "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 2},
        vision={"model_type": "qwen2_vl_vision", "depth": 2, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2,
                "num_heads": 2, "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2,
                "temporal_patch_size": 2, "hidden_act": "quick_gelu"},
        default_system="You are a helpful assistant."),
    TinyFamily(
        "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", 14, 3136, 12845056,
        CLIP_MEAN, CLIP_STD,
        text={"model_type": "qwen2_5_vl_text", "rope_parameters": {"mrope_section": [4, 2, 2]},
              "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 2},
        # window_size 56 px = 2 x 2 merged tokens: a 224 x 224 image already spans 16 windows.
        # Block 0 attends inside windows (cu_window_seqlens), block 1 per image (fullatt_block_indexes).
        vision={"model_type": "qwen2_5_vl_vision", "depth": 2, "hidden_size": 32, "intermediate_size": 64,
                "num_heads": 2, "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2,
                "temporal_patch_size": 2, "tokens_per_second": 2, "window_size": 56, "out_hidden_size": 64,
                "fullatt_block_indexes": [1], "hidden_act": "silu"},
        default_system="You are a helpful assistant.", max_position_embeddings=128000),
    TinyFamily(
        "qwen3_vl", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", 16, 65536, 16777216, HALF, HALF,
        text={"model_type": "qwen3_vl_text", "head_dim": 16, "rope_parameters": dict(QWEN3_ROPE)},
        vision={"model_type": "qwen3_vl_vision", **QWEN3_VISION, "deepstack_visual_indexes": [1]},
        video_processor_type="Qwen3VLVideoProcessor", rope_theta=5000000.0, max_position_embeddings=262144),
    TinyFamily(
        "qwen3_vl_moe", "Qwen3VLMoeForConditionalGeneration", "Qwen3VLProcessor", 16, 65536, 16777216, HALF, HALF,
        # Every decoder layer sparse: 4 experts of width 32, 2 routed per token.
        text={"model_type": "qwen3_vl_moe_text", "head_dim": 16, "rope_parameters": dict(QWEN3_ROPE),
              "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1,
              "mlp_only_layers": [], "router_aux_loss_coef": 0.001},
        vision={"model_type": "qwen3_vl_moe_vision", **QWEN3_VISION, "deepstack_visual_indexes": [1]},
        video_processor_type="Qwen3VLVideoProcessor", rope_theta=5000000.0, max_position_embeddings=262144),
    TinyFamily(
        "qwen3_5", "Qwen3_5ForConditionalGeneration", "Qwen3VLProcessor", 16, 65536, 16777216, HALF, HALF,
        text={"model_type": "qwen3_5_text", **QWEN3_5_TEXT},
        vision={"model_type": "qwen3_5_vision", **QWEN3_VISION}, **QWEN3_5_COMMON),
    TinyFamily(
        "qwen3_5_moe", "Qwen3_5MoeForConditionalGeneration", "Qwen3VLProcessor", 16, 65536, 16777216, HALF, HALF,
        # Hybrid and sparse: every layer's MLP is 4 routed experts of width 32 (top-2) + a shared expert.
        text={"model_type": "qwen3_5_moe_text", **QWEN3_5_TEXT, "num_experts": 4, "num_experts_per_tok": 2,
              "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "router_aux_loss_coef": 0.001},
        vision={"model_type": "qwen3_5_moe_vision", **QWEN3_VISION}, **QWEN3_5_COMMON),
)}


def model_config(family: TinyFamily) -> dict:
    """``config.json`` of the tiny checkpoint of ``family`` (without transformers_version)."""
    ids = family.ids()
    rope = {"rope_type": "default", "rope_theta": family.rope_theta, **family.text["rope_parameters"]}
    text = {**TEXT_BASE, **family.text, "rope_parameters": rope, "vocab_size": family.vocab_size,
            "max_position_embeddings": family.max_position_embeddings,
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]}
    return {
        "architectures": [family.architecture],
        "model_type": family.model_type,
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": True,
        "text_config": text,
        "vision_config": dict(family.vision),
        "dtype": "float32",
        **family.extra,
    }


def image_processor(family: TinyFamily) -> dict:
    """``preprocessor_config.json``: the family's real patch / merge / temporal sizes and pixel limits."""
    return {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": family.image_mean, "image_std": family.image_std,
        "image_processor_type": "Qwen2VLImageProcessorFast", "merge_size": 2, "patch_size": family.patch_size,
        "temporal_patch_size": 2, "resample": 3, "rescale_factor": RESCALE,
        "min_pixels": family.min_pixels, "max_pixels": family.max_pixels,
        "size": {"longest_edge": family.max_pixels, "shortest_edge": family.min_pixels},
        "processor_class": family.processor_class,
    }


def video_processor(family: TinyFamily) -> dict:
    """``video_preprocessor_config.json`` (same patch sizes as the images)."""
    factor = family.patch_size * 2
    return {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "do_sample_frames": True, "fps": 2, "image_mean": family.image_mean, "image_std": family.image_std,
        "merge_size": 2, "patch_size": family.patch_size, "temporal_patch_size": 2, "resample": 3,
        "rescale_factor": RESCALE, "max_frames": 768, "min_frames": 4,
        "size": {"longest_edge": 24576 * factor * factor, "shortest_edge": 4 * factor * factor},
        "video_processor_type": family.video_processor_type, "processor_class": family.processor_class,
    }


def chat_template(family: TinyFamily) -> str:
    """A reduced Qwen-VL chat template (system / user / assistant, images, videos; no tools).

    ms-swift's templates build prompts themselves; this one is for plain transformers users of the
    tiny checkpoint. Qwen2-VL and Qwen2.5-VL insert their default system prompt when a conversation
    has none, as their published templates do; Qwen3.5 trims each message's text and opens the
    assistant turn with ``<think>\\n`` (``<think>\\n\\n</think>\\n\\n`` with enable_thinking=False).
    """
    system, trim, prompt = "", "", "{{- '<|im_start|>assistant\\n' -}}"
    if family.thinking:  # Qwen3.5: content trimmed; the generation prompt opens (or skips) the thinking block
        trim = " | trim"
        prompt += ("{%- if enable_thinking is defined and enable_thinking is false -%}"
                   "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- else -%}{{- '<think>\\n' -}}{%- endif -%}")
    if family.default_system:
        system = ("{%- if messages[0]['role'] != 'system' -%}"
                  "{{- '<|im_start|>system\\n" + family.default_system + "<|im_end|>\\n' -}}{%- endif -%}")
    return (
        "{%- set image_count = namespace(value=0) -%}"
        "{%- set video_count = namespace(value=0) -%}" + system +
        "{%- for message in messages -%}"
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
        "{%- if message['content'] is string -%}{{- message['content']" + trim + " -}}"
        "{%- else -%}{%- for content in message['content'] -%}"
        "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content -%}"
        "{%- set image_count.value = image_count.value + 1 -%}"
        "{%- if add_vision_id -%}Picture {{ image_count.value }}: {% endif -%}"
        "<|vision_start|><|image_pad|><|vision_end|>"
        "{%- elif content['type'] == 'video' or 'video' in content -%}"
        "{%- set video_count.value = video_count.value + 1 -%}"
        "{%- if add_vision_id -%}Video {{ video_count.value }}: {% endif -%}"
        "<|vision_start|><|video_pad|><|vision_end|>"
        "{%- elif 'text' in content -%}{{- content['text']" + trim + " -}}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{- '<|im_end|>\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}" + prompt + "{%- endif -%}"
    )


def generation_config(family: TinyFamily) -> dict:
    ids = family.ids()
    return {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"], "do_sample": False}
