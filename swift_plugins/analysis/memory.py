"""Per-GPU memory estimate of one training step at a given packed length (an estimate, not a measurement).

    total = weights + trainable state + activations + logits + overhead      (bytes, per GPU)

    weights      = P_total * 2                      (bf16; / world_size under ZeRO-3)
    trainable    = T * (2 grad + 4 master + 8 Adam)  (grads / world for ZeRO >= 2, the rest / world for ZeRO >= 1)
    activations  = with gradient checkpointing: layers * L * hidden * 2  (one saved input per layer)
                   + one layer recomputed: L * (16 * hidden + 6 * intermediate) * 2
                   without: layers * L * (16 * hidden + 6 * intermediate) * 2
    logits       = the loss path's (training.fused_loss, MemorySetup.fused_loss):
                   full logits:  L * vocab * 10      (bf16 logits 2 + fp32 copy for the loss 4 + its grad 4)
                   fused (default): min(L, 1024) * vocab * 6   (one chunk: fp32 logits / softmax in place 4
                                 + its bf16 copy for the matmuls 2) + L * hidden * 2 (the hidden-state
                                 gradient kept for backward) + vocab * hidden * 4 with full tuning (fp32
                                 lm_head gradient)
    overhead     = 2 GiB                            (CUDA context, allocator fragmentation, buffers)

Assumptions: per-device batch of one packed row of L tokens; attention without an L x L score
matrix or mask: ``swiftpack_varlen`` (the default with packing: torch's flash varlen kernel on
CUDA bf16, sdpa per sample elsewhere) or flash-attn. With ``attn_impl: eager`` add the L x L
float mask and scores (L = 20,000: 763 MiB for the bf16 mask alone); bf16 weights; AdamW; LoRA trainable count
T = rank * (d_in + d_out) per targeted linear layer of the language model (all linear layers;
DoRA adds d_out magnitudes), vision tower frozen under LoRA; full tuning trains the language
model and the vision tower. The per-token activation factor (16*h + 6*i bytes/2) follows the
usual transformer accounting (Korthikanti et al. 2022) without the s^2 attention term. Vision
tower activations are small next to the language model's at these lengths and are ignored.
Measure on your hardware before trusting the last GiB.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

GIB = 1024 ** 3
OVERHEAD_BYTES = 2 * GIB
# Tokens per chunk of the fused linear cross-entropy (swift_plugins.training.fused_loss): its logits
# peak is LOSS_CHUNK_TOKENS x vocab instead of L x vocab.
LOSS_CHUNK_TOKENS = 1024


@dataclass(frozen=True)
class ModelShape:
    """Sizes read from a Qwen3-VL config.json (text + vision towers)."""
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    vision_params: int
    llm_params: int

    @property
    def total_params(self) -> int:
        return self.llm_params + self.vision_params

    @classmethod
    def from_config(cls, model_path) -> "ModelShape":
        with open(os.path.join(os.fspath(model_path), "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        t, v = cfg.get("text_config", cfg), cfg.get("vision_config", {})
        h, i, n = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
        heads = t["num_attention_heads"]
        kv = t.get("num_key_value_heads", heads)
        hd = t.get("head_dim", h // heads)
        vocab = t["vocab_size"]
        per_layer = h * hd * (heads + 2 * kv) + heads * hd * h + 3 * h * i + 2 * h
        tied = cfg.get("tie_word_embeddings", t.get("tie_word_embeddings", False))
        llm = n * per_layer + vocab * h * (1 if tied else 2) + h
        vh, vi, vd = v.get("hidden_size", 0), v.get("intermediate_size", 0), v.get("depth", 0)
        vision = vd * (4 * vh * vh + 2 * vh * vi) + 4 * vh * vh + vh * v.get("out_hidden_size", h) * 4
        return cls(hidden=h, intermediate=i, layers=n, heads=heads, kv_heads=kv, head_dim=hd, vocab=vocab,
                   vision_params=int(vision), llm_params=int(llm))

    def lora_params(self, rank: int, dora: bool = False) -> int:
        h, i, hd = self.hidden, self.intermediate, self.head_dim
        shapes = [(h, self.heads * hd), (h, self.kv_heads * hd), (h, self.kv_heads * hd), (self.heads * hd, h),
                  (h, i), (h, i), (i, h)]
        per_layer = sum(rank * (a + b) + (b if dora else 0) for a, b in shapes)
        return self.layers * per_layer


@dataclass(frozen=True)
class MemorySetup:
    tuner: str = "lora"            # lora | dora | full
    lora_rank: int = 16
    zero_stage: int = 2            # 0..3
    gradient_checkpointing: bool = True
    world_size: int = 4
    fused_loss: bool = True        # training.fused_loss: the loss without (L, vocab) logits


def estimate_step_memory(shape: ModelShape, seq_len: int, setup: MemorySetup) -> dict:
    """Bytes per GPU by component for one packed row of ``seq_len`` tokens (see module docstring)."""
    w = max(1, setup.world_size)
    weights = shape.total_params * 2
    if setup.zero_stage >= 3:
        weights /= w
    if setup.tuner == "full":
        trainable = shape.total_params
    else:
        trainable = shape.lora_params(setup.lora_rank, dora=setup.tuner == "dora")
    grads = trainable * 2 / (w if setup.zero_stage >= 2 else 1)
    optimizer = trainable * 12 / (w if setup.zero_stage >= 1 else 1)
    per_token_layer = (16 * shape.hidden + 6 * shape.intermediate) * 2
    if setup.gradient_checkpointing:
        activations = shape.layers * seq_len * shape.hidden * 2 + seq_len * per_token_layer
    else:
        activations = shape.layers * seq_len * per_token_layer
    logits = logits_bytes(shape, seq_len, setup, fused=setup.fused_loss)
    parts = {"weights": weights, "gradients": grads, "optimizer": optimizer, "activations": activations,
             "logits": logits, "overhead": OVERHEAD_BYTES}
    parts = {k: float(v) for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def logits_bytes(shape: ModelShape, seq_len: int, setup: MemorySetup, *, fused: bool) -> float:
    """The loss's term (see the module docstring). Qwen3-VL-8B (vocab 151,936, hidden 4,096), LoRA,
    20,000 tokens: full 28.3 GiB; fused 0.87 + 0.15 = 1.02 GiB."""
    if not fused:
        return float(seq_len * shape.vocab * 10)
    lm_head_grad = shape.vocab * shape.hidden * 4 if setup.tuner == "full" else 0
    return float(min(seq_len, LOSS_CHUNK_TOKENS) * shape.vocab * 6 + seq_len * shape.hidden * 2 + lm_head_grad)


def memory_table(shape: ModelShape, seq_lens, setup: MemorySetup) -> list[dict]:
    """One row per length with each component in GiB (rounded to 0.01), the setup's loss path; plus
    ``logits_{fused,full}_gib`` and ``total_{fused,full}_gib``: both loss paths side by side."""
    rows = []
    for n in seq_lens:
        parts = estimate_step_memory(shape, int(n), setup)
        row = {"seq_len": int(n), **{f"{k}_gib": round(v / GIB, 2) for k, v in parts.items()}}
        for path, fused in (("fused", True), ("full", False)):
            logits = logits_bytes(shape, int(n), setup, fused=fused)
            row[f"logits_{path}_gib"] = round(logits / GIB, 2)
            row[f"total_{path}_gib"] = round((parts["total"] - parts["logits"] + logits) / GIB, 2)
        rows.append(row)
    return rows


def setup_dict(setup: MemorySetup) -> dict:
    return asdict(setup)
