"""Packed rows are isolated: logits, loss and gradients equal the unpacked samples (tiny Qwen3-VL, fp32)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from swift_plugins.template import TEMPLATE_TYPE, register

SIZES = [(64, 96), (128, 64), (96, 96), (32, 160)]


def _setup(tiny_model_dir, tmp_path, attn_impl, device="cpu"):
    from swift import get_model_processor, get_template

    register()
    model, processor = get_model_processor(str(tiny_model_dir), model_type="qwen3_vl", torch_dtype=torch.float32,
                                           attn_impl=attn_impl, device_map=device)
    template = get_template(processor, template_type=TEMPLATE_TYPE)
    template.set_mode("train")
    template.model = model
    rows = []
    for i, (w, h) in enumerate(SIZES):
        image = tmp_path / f"img{i}.png"
        Image.new("RGB", (w, h), (i * 50, 100, 200 - i * 40)).save(image)
        answer = '[{"desc":"cat %d","bbox_2d":[1,2,3,%d]},{"desc":"dog","poly":[4,5,6,7,8,%d]}]' % (i, 7 * i, i)
        rows.append({"messages": [{"role": "user", "content": "<image>Detect all objects."},
                                  {"role": "assistant", "content": answer}], "images": [str(image)]})
    encoded = [template.encode(r, return_length=True) for r in rows]
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


@pytest.mark.gpu
def test_flash_attention_packed_logits_equal_each_sample_alone(tiny_model_dir, tmp_path):
    if not torch.cuda.is_available():
        pytest.fail("the gpu marker needs a CUDA device")
    model, template, encoded = _setup(tiny_model_dir, tmp_path, "flash_attn", device="cuda")
    model.to(torch.bfloat16)
    assert max(_segment_diffs(model, template, encoded)) <= 5e-2  # bf16 kernels
