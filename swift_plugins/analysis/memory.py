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
                                 lm_head gradient); under ZeRO-3 + vocab * hidden * 2 (lm_head gathered
                                 for the loss) and, with full tuning, another vocab * hidden * 2 (the
                                 probe through which its gradient reaches DeepSpeed, linear_ce)
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

Hybrid decoders (Qwen3.5 / Qwen3.6: three of four layers Gated DeltaNet) have exact parameter and
LoRA counts here. At inference a linear-attention layer holds a fixed-size recurrent state (value
heads x key dim x value dim) instead of a KV cache that grows with L; training keeps no cache
either way (``use_cache`` false), so for training memory the difference is in the activations:
such a layer has no attention scores at all, but transformers' chunked kernel keeps one fp32
state per 64-token chunk for the backward (value heads x key dim x value dim x 4 bytes x L / 64:
with the config defaults, 32 x 128 x 128: 32 KiB per token and layer) and fp32 copies of q, k and v. The estimate counts
these layers with the same per-token factor as attention layers; without gradient checkpointing
add the chunk states per linear-attention layer.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from swift_plugins.families import TextKeys, VisionKeys, family_for_config, read_config

GIB = 1024 ** 3
OVERHEAD_BYTES = 2 * GIB
# Tokens per chunk of the fused linear cross-entropy (swift_plugins.training.fused_loss): its logits
# peak is LOSS_CHUNK_TOKENS x vocab instead of L x vocab.
LOSS_CHUNK_TOKENS = 1024


@dataclass(frozen=True)
class ModelShape:
    """Sizes read from a supported checkpoint's config.json (text + vision towers), by its family's keys.

    A MoE language model (``moe_layers`` > 0) keeps every expert resident (``llm_params`` counts all
    ``experts``) while each token runs through ``experts_per_token`` of them (activations).
    """
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    vision_params: int
    llm_params: int
    moe_layers: int = 0
    experts: int = 0
    experts_per_token: int = 0
    moe_intermediate: int = 0
    # the language model's linear layers as ((layers, ((d_in, d_out), ...)), ...) where they are not the standard
    # attention + MLP ones (Qwen3.5: Gated DeltaNet and gated full-attention layers); what LoRA targets
    linear_groups: tuple = ()

    @property
    def total_params(self) -> int:
        return self.llm_params + self.vision_params

    @classmethod
    def from_config(cls, model_path) -> "ModelShape":
        """Read ``model_path``/config.json; its ``model_type`` picks the keys (:mod:`swift_plugins.families`)."""
        cfg = read_config(model_path)
        family = family_for_config(cfg, where=os.path.join(os.fspath(model_path), "config.json"))
        t = {**cfg, **cfg.get("text_config", {})}  # Qwen2-VL configs keep the text sizes at the top level
        h, i, n = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
        heads = t["num_attention_heads"]
        kv = t.get("num_key_value_heads") or heads
        hd = t.get("head_dim") or h // heads
        moe = _moe_layout(t, n) if family.text.moe else (0, 0, 0, 0)
        tied = cfg.get("tie_word_embeddings", t.get("tie_word_embeddings", False))
        layers = _hybrid_layers(t, h, i, heads, kv, hd, moe) if family.text.hybrid else \
            _text_layers(family.text, h, i, n, heads, kv, hd, moe)
        llm = layers + t["vocab_size"] * h * (1 if tied else 2) + h
        groups = _hybrid_linear_groups(t, h, i, heads, kv, hd, moe) if family.text.hybrid else ()
        return cls(hidden=h, intermediate=i, layers=n, heads=heads, kv_heads=kv, head_dim=hd, vocab=t["vocab_size"],
                   vision_params=vision_params(family.vision, cfg.get("vision_config", {})), llm_params=int(llm),
                   moe_layers=moe[0], experts=moe[1], experts_per_token=moe[2], moe_intermediate=moe[3],
                   linear_groups=groups)

    @property
    def active_intermediate(self) -> int:
        """MLP width one token of a MoE layer runs through (its routed experts)."""
        return self.experts_per_token * self.moe_intermediate

    def lora_params(self, rank: int, dora: bool = False) -> int:
        """LoRA on every linear layer of the language model: attention, and the MLP of dense layers (a MoE
        layer's experts are fused parameter tensors and its router a plain weight: no linear layers)."""
        h, i, hd = self.hidden, self.intermediate, self.head_dim
        attention = [(h, self.heads * hd), (h, self.kv_heads * hd), (h, self.kv_heads * hd), (self.heads * hd, h)]
        mlp = [(h, i), (h, i), (i, h)]

        def per_layer(shapes):
            return sum(rank * (a + b) + (b if dora else 0) for a, b in shapes)

        if self.linear_groups:
            return sum(count * per_layer(shapes) for count, shapes in self.linear_groups)
        return (self.layers - self.moe_layers) * per_layer(attention + mlp) + self.moe_layers * per_layer(attention)


def _moe_layout(t: dict, layers: int) -> tuple[int, int, int, int]:
    """(MoE layers, experts, experts per token, expert width): transformers' rule for which layers are sparse."""
    step, dense = t.get("decoder_sparse_step", 1), set(t.get("mlp_only_layers") or [])
    experts = t["num_experts"]
    sparse = sum(1 for k in range(layers) if k not in dense and experts > 0 and (k + 1) % step == 0)
    return sparse, experts, t["num_experts_per_tok"], t["moe_intermediate_size"]


def _text_layers(keys: TextKeys, h: int, i: int, n: int, heads: int, kv: int, hd: int, moe: tuple) -> int:
    """Parameters of the decoder layers: attention (+ q/k/v biases, + q/k norms), MLP or experts + router, 2 norms."""
    attention = h * hd * (heads + 2 * kv) + heads * hd * h
    attention += hd * (heads + 2 * kv) if keys.qkv_bias else 0
    attention += 2 * hd if keys.qk_norm else 0
    sparse, experts, _, moe_i = moe
    dense_mlp, moe_mlp = 3 * h * i, experts * 3 * h * moe_i + experts * h
    return n * (attention + 2 * h) + (n - sparse) * dense_mlp + sparse * moe_mlp


def _layer_types(t: dict) -> list:
    n = t["num_hidden_layers"]
    return t.get("layer_types") or ["full_attention" if (k + 1) % t.get("full_attention_interval", 4) == 0
                                    else "linear_attention" for k in range(n)]


def _hybrid_linear_groups(t: dict, h: int, i: int, heads: int, kv: int, hd: int, moe: tuple) -> tuple:
    """Qwen3.5's linear layers per kind of layer: ((layers, ((d_in, d_out), ...)), ...).

    A MoE layer's routed experts are fused tensors and its router a plain weight (no linear layers);
    its shared expert and that expert's one-output gate are linear layers.
    """
    types = _layer_types(t)
    full = types.count("full_attention")
    nv, vd = t["linear_num_value_heads"], t["linear_num_value_heads"] * t["linear_value_head_dim"]
    kd = t["linear_num_key_heads"] * t["linear_key_head_dim"]
    attention = ((h, 2 * heads * hd), (h, kv * hd), (h, kv * hd), (heads * hd, h))
    deltanet = ((h, 2 * kd + vd), (h, vd), (h, nv), (h, nv), (vd, h))
    si = t.get("shared_expert_intermediate_size", 0)
    mlp = ((h, si), (h, si), (si, h), (h, 1)) if moe[0] else ((h, i), (h, i), (i, h))
    if moe[0] and moe[0] != len(types):
        raise ValueError("a hybrid model with dense and MoE layers mixed is not modelled")
    return ((full, attention + mlp), (len(types) - full, deltanet + mlp))


def _hybrid_layers(t: dict, h: int, i: int, heads: int, kv: int, hd: int, moe: tuple) -> int:
    """Parameters of Qwen3.5's decoder layers (``layer_types``; by default every 4th layer full attention).

    Full attention is gated (q_proj also emits a gate per query channel) with q / k norms; a Gated
    DeltaNet layer has in_proj_qkv / z / b / a, a depthwise conv (no bias) over q, k and v, dt_bias
    and A_log per value head, a gated RMSNorm over the value head dim and out_proj; a MoE layer adds
    a shared expert and its one-output gate beside the routed experts.
    """
    n = t["num_hidden_layers"]
    full = _layer_types(t).count("full_attention")
    nv, dv = t["linear_num_value_heads"], t["linear_value_head_dim"]
    kd, vd = t["linear_num_key_heads"] * t["linear_key_head_dim"], nv * dv
    attention = h * hd * (2 * heads + 2 * kv) + heads * hd * h + 2 * hd
    conv = 2 * kd + vd
    deltanet = h * (conv + vd + 2 * nv) + conv * t.get("linear_conv_kernel_dim", 4) + 2 * nv + dv + vd * h
    sparse, experts, _, moe_i = moe
    shared = 3 * h * t.get("shared_expert_intermediate_size", 0) + h if sparse else 0
    dense_mlp, moe_mlp = 3 * h * i, experts * 3 * h * moe_i + experts * h + shared
    return full * attention + (n - full) * deltanet + n * 2 * h + (n - sparse) * dense_mlp + sparse * moe_mlp


def vision_params(keys: VisionKeys, v: dict) -> int:
    """Parameters of the vision tower from its config by the family's keys (0 without a vision_config).

    Patch embedding (a Conv3d over temporal x patch x patch pixels), learned positions, ``depth``
    blocks (2 norms, qkv + proj with biases, MLP with biases), the merger (norm, 2 linear layers over
    merge^2 patches) and one more merger per DeepStack layer (its norm over the merged width).
    """
    if not v:
        return 0
    w, out = v[keys.width], v[keys.out]
    mlp = v[keys.intermediate] if keys.intermediate else w * v[keys.mlp_ratio]
    patch = v.get("patch_size", v.get("spatial_patch_size", 14))
    pixels = v.get("in_channels", v.get("in_chans", 3)) * v.get("temporal_patch_size", 2) * patch * patch
    merged = w * v.get("spatial_merge_size", 2) ** 2
    embed = pixels * w + (w if keys.patch_bias else 0)
    embed += v[keys.position_embeddings] * w if keys.position_embeddings else 0
    mlp_params = (3 * w * mlp + 2 * mlp if keys.gated else 2 * w * mlp + mlp) + w  # biases on every linear
    block = 2 * keys.norm_params * w + 4 * w * w + 4 * w + mlp_params  # norms, qkv + proj, MLP
    merger_mlp = merged * merged + merged + merged * out + out
    deepstack = len(v.get(keys.deepstack) or []) if keys.deepstack else 0
    return (embed + v["depth"] * block + keys.norm_params * w + merger_mlp
            + deepstack * (keys.norm_params * merged + merger_mlp))


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
    activations = _activations(shape, seq_len, setup.gradient_checkpointing)
    logits = logits_bytes(shape, seq_len, setup, fused=setup.fused_loss)
    parts = {"weights": weights, "gradients": grads, "optimizer": optimizer, "activations": activations,
             "logits": logits, "overhead": OVERHEAD_BYTES}
    parts = {k: float(v) for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def _activations(shape: ModelShape, seq_len: int, checkpointing: bool) -> float:
    """Bytes of saved activations; a MoE layer's MLP term follows the routed experts' width."""
    dense = (16 * shape.hidden + 6 * shape.intermediate) * 2
    routed = (16 * shape.hidden + 6 * shape.active_intermediate) * 2
    per_layer = [dense] * (shape.layers - shape.moe_layers) + [routed] * shape.moe_layers
    if checkpointing:  # one saved input per layer + the largest layer recomputed
        return shape.layers * seq_len * shape.hidden * 2 + seq_len * max(per_layer, default=0)
    return seq_len * sum(per_layer)


def logits_bytes(shape: ModelShape, seq_len: int, setup: MemorySetup, *, fused: bool) -> float:
    """The loss's term (see the module docstring). Qwen3-VL-8B (vocab 151,936, hidden 4,096), LoRA,
    20,000 tokens: full 28.3 GiB; fused 0.87 + 0.15 = 1.02 GiB."""
    if not fused:
        return float(seq_len * shape.vocab * 10)
    head = shape.vocab * shape.hidden
    full = setup.tuner == "full"
    lm_head = head * 4 * full  # its fp32 gradient
    if setup.zero_stage >= 3:
        lm_head += head * 2 * (1 + full)  # gathered; with full tuning the probe (linear_ce) too
    return float(min(seq_len, LOSS_CHUNK_TOKENS) * shape.vocab * 6 + seq_len * shape.hidden * 2 + lm_head)


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
