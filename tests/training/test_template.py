"""Packed rows are isolated: logits, loss and gradients equal the unpacked samples (tiny Qwen3-VL, fp32)."""
from __future__ import annotations

import pytest
import torch

from helpers import detection_swift_rows
from swift_plugins.families import FAMILIES

TEMPLATE_TYPE = FAMILIES["qwen3_vl"].packing_template
from swift_plugins.training.template import register



def _setup(tiny_model_dir, tmp_path, attn_impl, device="cpu", dtype=torch.float32):
    from swift import get_model_processor, get_template

    register()
    model, processor = get_model_processor(str(tiny_model_dir), model_type="qwen3_vl", torch_dtype=dtype,
                                           attn_impl=attn_impl, device_map=device)
    template = get_template(processor, template_type=TEMPLATE_TYPE)
    template.set_mode("train")
    template.model = model
    encoded = [template.encode(r, return_length=True) for r in detection_swift_rows(tmp_path)]
    return model, template, encoded


def _collate(template, encoded, packed: bool):
    template.padding_free = template.packing = packed
    batch = [[dict(e) for e in encoded]] if packed else [dict(e) for e in encoded]
    return template.data_collator(batch)


def _forward(model, batch):
    batch = {k: (v.to(model.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    return model(**batch)


def _segment_diffs(model, template, encoded, position_rows=4):
    with torch.no_grad():
        alone = [_forward(model, {k: v for k, v in _collate(template, [e], False).items() if k != "labels"}).logits[0]
                 for e in encoded]
        packed_batch = {k: v for k, v in _collate(template, encoded, True).items() if k != "labels"}
        if position_rows == 3:  # what ms-swift's stock collator hands the model
            packed_batch["position_ids"] = packed_batch["position_ids"][1:]
        packed = _forward(model, packed_batch).logits[0]
    diffs, offset = [], 0
    for e, single in zip(encoded, alone):
        n = e["length"]
        diffs.append((packed[offset:offset + n] - single).abs().max().item())
        offset += n
    assert offset == packed.shape[0]
    return diffs


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_packed_logits_equal_each_sample_alone(tiny_model_dir, tmp_path, attn_impl):
    model, template, encoded = _setup(tiny_model_dir, tmp_path, attn_impl)
    assert max(_segment_diffs(model, template, encoded)) <= 1e-4


def test_stock_three_row_positions_mix_samples(tiny_model_dir, tmp_path):
    """The failure this template fixes: without the text row, sdpa lets samples attend to each other."""
    model, template, encoded = _setup(tiny_model_dir, tmp_path, "sdpa")
    diffs = _segment_diffs(model, template, encoded, position_rows=3)
    assert diffs[0] <= 1e-4 < 1e-2 < max(diffs[1:])


def test_packed_loss_and_gradients_equal_unpacked_token_mean(tiny_model_dir, tmp_path):
    model, template, encoded = _setup(tiny_model_dir, tmp_path, "sdpa")
    model.train()

    def loss_and_grads(packed):
        model.zero_grad()
        loss = _forward(model, _collate(template, encoded, packed)).loss
        loss.backward()
        return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_u, grads_u = loss_and_grads(False)
    loss_p, grads_p = loss_and_grads(True)
    assert abs(loss_p - loss_u) / abs(loss_u) <= 1e-4
    assert grads_u.keys() == grads_p.keys() and len(grads_u) > 10
    for name in grads_u:
        ref = grads_u[name].norm()
        assert (grads_p[name] - grads_u[name]).norm() <= 1e-4 * max(ref, 1e-8) + 1e-9, name


def test_packed_row_keeps_every_image_block_whole(tiny_model_dir, tmp_path):
    model, template, encoded = _setup(tiny_model_dir, tmp_path, "sdpa")
    batch = _collate(template, encoded, True)
    ids = batch["input_ids"][0].tolist()
    offset = 0
    for e, grid in zip(encoded, batch["image_grid_thw"]):
        segment = ids[offset:offset + e["length"]]
        pads = [i for i, t in enumerate(segment) if t == 151655]
        assert len(pads) == int(grid.prod()) // 4 and pads == list(range(pads[0], pads[0] + len(pads)))
        assert segment[pads[0] - 1] == 151652 and segment[pads[-1] + 1] == 151653  # vision_start / vision_end
        offset += e["length"]
    text_positions = batch["position_ids"][0, 0].tolist()
    starts = [i for i, p in enumerate(text_positions) if p == 0]
    assert starts == [0] + [sum(e["length"] for e in encoded[:k]) for k in range(1, len(encoded))]


FLASH_REFERENCE = "flash_varlen_reference"  # has "flash" in it: every flash-only branch of transformers is taken


def _flash_varlen_reference(module, query, key, value, attention_mask, *, scaling=None, dropout=0.0,
                            cu_seq_lens_q=None, cu_seq_lens_k=None, position_ids=None, is_causal=None, **_):
    """What flash-attn's kernels compute, written in plain torch (flash-attn does not build on CPU).

    Mirrors transformers' ``_flash_attention_forward`` dispatch for batch 1 without padding:
    ``cu_seq_lens`` given -> varlen over those segments; else packed ``position_ids`` -> segments
    where they restart; else one segment. Each segment attends only to itself (causal for text).
    It never reads a 4-D mask, so a sample boundary must come through the kwargs, as with flash-attn.
    """
    from transformers.modeling_flash_attention_utils import _is_packed_sequence, prepare_fa_kwargs_from_position_ids

    assert attention_mask is None, "flash-attn gets no mask for an unpadded row"
    assert query.shape[0] == 1 and not (module.training and dropout)
    n = query.shape[2]
    if cu_seq_lens_q is not None:
        assert torch.equal(cu_seq_lens_q, cu_seq_lens_k)
        cu = cu_seq_lens_q
    elif _is_packed_sequence(position_ids, 1):
        (cu, _), _ = prepare_fa_kwargs_from_position_ids(position_ids)
    else:
        cu = torch.tensor([0, n])
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    bounds = cu.tolist()
    assert bounds[0] == 0 and bounds[-1] == n
    out = [torch.nn.functional.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
                                                            is_causal=causal, scale=scaling)
           for s, e in zip(bounds[:-1], bounds[1:])]
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None


def test_packed_batch_hands_flash_attention_the_sample_boundaries(tiny_model_dir, tmp_path):
    """The collated pack carries what flash-attn's varlen path needs: no mask, cu_seq_lens at every sample start."""
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    _, template, encoded = _setup(tiny_model_dir, tmp_path, "sdpa")
    batch = _collate(template, encoded, True)
    lengths = [e["length"] for e in encoded]
    bounds = [sum(lengths[:k]) for k in range(len(lengths) + 1)]
    assert "attention_mask" not in batch
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == bounds
    assert int(batch["max_length_q"]) == int(batch["max_length_k"]) == max(lengths)
    # the text row of position_ids (what the decoder layers get) restarts at the same places
    (from_positions, _), _ = prepare_fa_kwargs_from_position_ids(batch["position_ids"][0])
    assert from_positions.tolist() == bounds


@pytest.mark.parametrize("boundaries_from", ["cu_seq_lens", "position_ids"])
def test_flash_attention_reference_packed_logits_equal_each_sample_alone(tiny_model_dir, tmp_path, boundaries_from):
    """Flash-attn's varlen semantics on CPU: the model, collator and kwargs plumbing are real, the kernel is torch."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(FLASH_REFERENCE, _flash_varlen_reference)
    AttentionMaskInterface.register(FLASH_REFERENCE, flash_attention_mask)
    model, template, encoded = _setup(tiny_model_dir, tmp_path, "sdpa")
    # set on the configs the modules read (set_attn_implementation would try to fetch a hub kernel)
    for config in (model.config, model.config.text_config, model.config.vision_config):
        config._attn_implementation = FLASH_REFERENCE
    assert model.config.text_config._attn_implementation == model.config.vision_config._attn_implementation == \
        FLASH_REFERENCE
    calls = []
    model.model.language_model.layers[0].self_attn.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(sorted(k for k in kwargs if k.startswith("cu_seq_lens"))),
        with_kwargs=True)
    if boundaries_from == "position_ids":  # transformers' fallback: segments where the text positions restart
        collate = template.data_collator

        def without_cu_seq_lens(batch, **kwargs):
            res = collate(batch, **kwargs)
            for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
                res.pop(key, None)
            return res

        template.data_collator = without_cu_seq_lens
    assert max(_segment_diffs(model, template, encoded)) <= 1e-4
    expected = ["cu_seq_lens_k", "cu_seq_lens_q"] if boundaries_from == "cu_seq_lens" else []
    assert calls[-1] == expected  # the packed forward (the last one) reached the layer as intended


@pytest.mark.gpu
def test_flash_attention_packed_logits_equal_each_sample_alone(tiny_model_dir, tmp_path):
    if not torch.cuda.is_available():
        pytest.fail("the gpu marker needs a CUDA device")
    model, template, encoded = _setup(tiny_model_dir, tmp_path, "flash_attn", device="cuda", dtype=torch.bfloat16)
    assert max(_segment_diffs(model, template, encoded)) <= 5e-2  # bf16 kernels


@pytest.mark.parametrize("packing", [True, False])
def test_trainer_hooks_install_linear_attention_isolation_for_the_run_only(tiny_template, packing):
    """ms-swift's trainer calls register_post_encode_hook at train start and remove_post_encode_hook at the end."""
    from swift import get_template
    from swift_plugins.dev.hybrid_decoder import build
    from swift_plugins.training.linear_attention import BACKEND_PER_SEGMENT

    register()
    template = get_template(tiny_template.processor, template_type=TEMPLATE_TYPE)
    template.padding_free = template.packing = packing
    model = build(seed=0)
    linear = model.model.layers[0].linear_attn
    template.register_post_encode_hook([model])
    try:
        isolation = getattr(model, "_swiftpack_isolation", None)
        assert ("forward" in vars(linear)) == packing
        assert (isolation.backend, len(isolation.layers)) == (BACKEND_PER_SEGMENT, 3) if packing else isolation is None
    finally:
        template.remove_post_encode_hook()
    assert "forward" not in vars(linear) and not hasattr(model, "_swiftpack_isolation")
    assert not model._forward_pre_hooks and not model.model.layers[0]._forward_pre_hooks
