"""Build a tiny, random, fully offline Qwen3-VL checkpoint: the model of every test and the demo.

Same bytes on every run (fixed seeds, a deterministic BPE corpus, sorted JSON). Real users pass
their own checkpoint; this one only has to be *shaped* like Qwen3-VL where it matters:

    what                        tiny value                      why it must match the real model
    ------------------------    ----------------------------    -------------------------------------
    vocab (embedding rows)      151,936                         ms-swift hard-codes image/video pad ids
    special tokens              <|endoftext|> 151643 ...        on their real ids (<|image_pad|> 151655)
    pre-tokenizer               Qwen's split regex, byte-level  each digit its own token, like Qwen
    vision patch / merge / T    16 / 2 / 2                      image token count = (h/32)*(w/32)
    text                        hidden 64, 2 layers, head 16    fast on CPU (~40 MB fp32, tied lm_head)
    vision                      hidden 32, depth 2, DeepStack   exercises merger + deepstack mergers

The byte-level BPE is trained offline on a small built-in corpus (detection-style JSON, LVIS-like
category names, chat words), so ordinary English and JSON tokenise into a few tokens per word
while digits stay single tokens: token counts behave like Qwen's, with a smaller merge table.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random

from swift_plugins.files import atomic_dir

# Qwen2/2.5/3 pre-tokenizer: contractions | letters | single digit | punctuation | newlines | spaces.
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Special tokens on their real Qwen3-VL ids (151643..151668); the embedding has 151,936 rows.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]
FIRST_SPECIAL_ID = 151643
VOCAB_SIZE = 151936
# Tokens that are not "special" in Qwen's tokenizer (they may appear in normal text).
NON_SPECIAL = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>",
               "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
               "<|file_sep|>"}

# Reduced Qwen3-VL Instruct chat template: system / user / assistant turns with images and videos
# (tool calling omitted). ms-swift's `qwen3_vl` template builds prompts itself; this template is
# for plain transformers users of the tiny checkpoint and renders the same text.
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- set video_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id -%}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content['type'] == 'video' or 'video' in content -%}"
    "{%- set video_count.value = video_count.value + 1 -%}"
    "{%- if add_vision_id -%}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content -%}{{- content['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_WORDS = (
    "the a an of in on at to is are and or with for from by this that image picture photo "
    "detect all objects output json list desc poly bbox polygon box point points coordinates "
    "pixel pixels each object category name left right top bottom width height user assistant "
    "system you are helpful please return format region mask segment instance scene "
    "person car dog cat bird horse sheep cow elephant bear zebra giraffe backpack umbrella "
    "handbag tie suitcase frisbee skis snowboard ball kite bat glove skateboard surfboard "
    "racket bottle glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot pizza donut cake chair couch plant bed table toilet tv laptop mouse remote keyboard "
    "phone microwave oven toaster sink refrigerator book clock vase scissors teddy drier "
    "toothbrush street sign traffic light fire hydrant stop parking meter bench window door "
    "wheel tire headlight license plate jacket shirt hat shoe sock pole lamp curtain pillow"
).split()


def training_corpus() -> list[str]:
    """Deterministic text the BPE is trained on (seeded; no files, no network)."""
    rng = random.Random(1234)
    lines = []
    for _ in range(3000):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", ":", ""]))
    for _ in range(1500):
        objs = []
        for _ in range(rng.randint(1, 4)):
            name = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 2)))
            key = rng.choice(["poly", "bbox_2d"])
            n = 4 if key == "bbox_2d" else 2 * rng.randint(3, 8)
            coords = ",".join(str(rng.randint(0, 1023)) for _ in range(n))
            objs.append('{"desc":"%s","%s":[%s]}' % (name, key, coords))
        lines.append("[" + ",".join(objs) + "]")
    return lines


def build_tokenizer_json(merges_vocab_size: int = 4000) -> dict:
    """Train the byte-level BPE and place Qwen's special tokens on their real ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=merges_vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    # Fill ids up to the first special id with unreachable placeholders (no merge produces them),
    # as the real tokenizer has 151,643 regular tokens before the specials.
    for i in range(len(vocab), FIRST_SPECIAL_ID):
        vocab[f"<|swiftpack_unused_{i}|>"] = i
    data["added_tokens"] = [
        {"id": FIRST_SPECIAL_ID + k, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": t not in NON_SPECIAL}
        for k, t in enumerate(SPECIAL_TOKENS)
    ]
    return data


def tokenizer_config() -> dict:
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(FIRST_SPECIAL_ID + k): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                        "single_word": False, "special": t not in NON_SPECIAL}
            for k, t in enumerate(SPECIAL_TOKENS)
        },
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 262144,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def model_config() -> dict:
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "tie_word_embeddings": True,
        "text_config": {
            "model_type": "qwen3_vl_text",
            "vocab_size": VOCAB_SIZE,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "hidden_act": "silu",
            "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0,
                                "mrope_section": [4, 2, 2], "mrope_interleaved": True},
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "tie_word_embeddings": True,
            "dtype": "float32",
        },
        "vision_config": {
            "model_type": "qwen3_vl_vision",
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 64,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [1],
            "hidden_act": "gelu_pytorch_tanh",
        },
        "dtype": "float32",
    }


IMAGE_PROCESSOR = {
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "image_processor_type": "Qwen2VLImageProcessorFast", "merge_size": 2, "patch_size": 16,
    "temporal_patch_size": 2, "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "processor_class": "Qwen3VLProcessor",
}
VIDEO_PROCESSOR = {
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "do_sample_frames": True, "fps": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "merge_size": 2, "patch_size": 16, "temporal_patch_size": 2, "resample": 3,
    "rescale_factor": 0.00392156862745098, "max_frames": 768, "min_frames": 4,
    "size": {"longest_edge": 25165824, "shortest_edge": 4096},
    "video_processor_type": "Qwen3VLVideoProcessor", "processor_class": "Qwen3VLProcessor",
}


def _write_json(path: pathlib.Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def build(out_dir: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """Write the checkpoint to ``out_dir`` (atomically: built in a temp dir, then renamed)."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    out = pathlib.Path(out_dir)
    with atomic_dir(out) as tmp:
        _write_json(tmp / "tokenizer.json", build_tokenizer_json())
        _write_json(tmp / "tokenizer_config.json", tokenizer_config())
        _write_json(tmp / "special_tokens_map.json", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
        (tmp / "chat_template.jinja").write_text(CHAT_TEMPLATE + "\n", encoding="utf-8")
        _write_json(tmp / "preprocessor_config.json", IMAGE_PROCESSOR)
        _write_json(tmp / "video_preprocessor_config.json", VIDEO_PROCESSOR)
        cfg = model_config()
        import transformers
        cfg["transformers_version"] = transformers.__version__  # v5+: skips the hub lookup for mistral regex
        _write_json(tmp / "config.json", cfg)
        _write_json(tmp / "generation_config.json",
                    {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
                     "do_sample": False})

        torch.manual_seed(seed)
        config = Qwen3VLConfig.from_pretrained(tmp)
        with torch.device("cpu"):
            model = Qwen3VLForConditionalGeneration(config).float().eval()
        # Deterministic, ordered tensors; tied lm_head is stored once (as the embedding).
        state = {k: v.detach().contiguous().clone() for k, v in sorted(model.state_dict().items())
                 if k != "lm_head.weight"}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build a tiny random offline Qwen3-VL checkpoint (deterministic bytes) for tests and the demo.")
    parser.add_argument("out_dir", help="output folder (replaced if it exists)")
    parser.add_argument("--seed", type=int, default=0, help="weight init seed (default 0)")
    args = parser.parse_args(argv)
    path = build(args.out_dir, seed=args.seed)
    print(f"tiny Qwen3-VL written to {path}")
    return 0
