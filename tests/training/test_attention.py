"""swiftpack_varlen: exact against a plain reference on random tensors, packed rows isolated on the real tiny
Qwen3-VL (logits, loss, gradients, DoRA + gradient checkpointing), and no L x L tensor anywhere (fp32, CPU)."""
from __future__ import annotations


import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import detection_swift_rows
from swift_plugins.families import FAMILIES

TEMPLATE_TYPE = FAMILIES["qwen3_vl"].packing_template
from swift_plugins.training.template import register as register_template
from swift_plugins.training import attention
from swift_plugins.training.attention import (ATTN_IMPL, KERNEL_SDPA, KERNEL_VARLEN, choose_kernel, find_segments,
                                              register, varlen_attention_forward, varlen_attention_mask, varlen_call)

NO_BOUNDARIES = "swiftpack_varlen_no_boundaries"


class Attn(torch.nn.Module):
    """What transformers hands an attention function as ``module``: is_causal and the training flag."""

    def __init__(self, is_causal=True):
        super().__init__()
        self.is_causal = is_causal


def reference(q, k, v, cu_q, cu_k, causal, scale):
    """Dense float64 attention over a block-diagonal mask (bottom-right causal per block): the meaning, spelled out."""
    q, k, v = q.double(), k.double(), v.double()
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    allowed = torch.zeros(q.shape[2], k.shape[2], dtype=torch.bool)
    for qs, qe, ks, ke in zip(cu_q, cu_q[1:], cu_k, cu_k[1:]):
        block = torch.ones(qe - qs, ke - ks, dtype=torch.bool)
        if causal:
            block = torch.arange(qe - qs)[:, None] + (ke - ks) - (qe - qs) >= torch.arange(ke - ks)[None, :]
        allowed[qs:qe, ks:ke] = block
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1).nan_to_num(0.0) @ v).transpose(1, 2).float()


def qkv(n, heads_q=4, heads_k=2, dim=8, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, h, n, dim, generator=g) for h in (heads_q, heads_k, heads_k)]


# ----------------------------------------------------------------------------- exact unit tests
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("source", ["cu_seq_lens", "position_ids"])
def test_segments_match_reference_with_gqa_and_custom_scale(causal, source):
    q, k, v = qkv(12)
    cu = [0, 5, 8, 12]
    kwargs = ({"cu_seq_lens_q": torch.tensor(cu, dtype=torch.int32), "cu_seq_lens_k": torch.tensor(cu)}
              if source == "cu_seq_lens" else {"position_ids": torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]])})
    out, weights = varlen_attention_forward(Attn(causal), q, k, v, None, scaling=0.3, **kwargs)
    assert weights is None and out.shape == (1, 12, 4, 8) and out.is_contiguous()
    torch.testing.assert_close(out, reference(q, k, v, cu, cu, causal, 0.3), rtol=0, atol=1e-5)
    # the same boundaries without GQA's head sharing would be a different function: the test can tell
    assert (out - reference(q, k.flip(1), v.flip(1), cu, cu, causal, 0.3)).abs().max() > 1e-2


def test_no_boundaries_is_one_segment_equal_to_sdpa():
    q, k, v = qkv(10, heads_k=4)
    out, _ = varlen_attention_forward(Attn(), q, k, v, None, position_ids=torch.arange(10)[None])
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    torch.testing.assert_close(out, sdpa, rtol=0, atol=1e-6)
    assert find_segments(1, 10, 10, position_ids=torch.arange(10)[None]).source == "rows"


def test_is_causal_kwarg_overrides_module_and_default_scale_is_inverse_sqrt_dim():
    q, k, v = qkv(9)
    cu = torch.tensor([0, 4, 9])
    out, _ = varlen_attention_forward(Attn(True), q, k, v, None, is_causal=False, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    torch.testing.assert_close(out, reference(q, k, v, [0, 4, 9], [0, 4, 9], False, 8 ** -0.5), rtol=0, atol=1e-5)


def test_padded_batch_uses_each_rows_unpadded_tokens_and_zeros_padding():
    q, k, v = qkv(6, batch=2)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    out, _ = varlen_attention_forward(Attn(), q, k, v, mask)
    torch.testing.assert_close(out[0], reference(q[:1], k[:1], v[:1], [0, 6], [0, 6], True, 8 ** -0.5)[0],
                               rtol=0, atol=1e-5)
    row1 = reference(q[1:, :, 2:], k[1:, :, 2:], v[1:, :, 2:], [0, 4], [0, 4], True, 8 ** -0.5)[0]
    torch.testing.assert_close(out[1, 2:], row1, rtol=0, atol=1e-5)
    assert out[1, :2].abs().max() == 0


def test_query_shorter_than_keys_is_aligned_bottom_right():
    q, _, _ = qkv(3, seed=1)
    _, k, v = qkv(7, seed=2)
    cu_q, cu_k = torch.tensor([0, 3]), torch.tensor([0, 7])
    out, _ = varlen_attention_forward(Attn(), q, k, v, None, cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k)
    torch.testing.assert_close(out, reference(q, k, v, [0, 3], [0, 7], True, 8 ** -0.5), rtol=0, atol=1e-5)


def test_bad_boundaries_and_dense_masks_are_refused():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="rise from 0 to the 8 tokens"):
        varlen_attention_forward(Attn(), q, k, v, None, cu_seq_lens_q=torch.tensor([0, 5, 7]),
                                 cu_seq_lens_k=torch.tensor([0, 5, 7]))
    with pytest.raises(ValueError, match="2-D padding mask"):
        varlen_attention_forward(Attn(), q, k, v, torch.ones(1, 1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="one position per token"):
        varlen_attention_forward(Attn(), q, k, v, None, position_ids=torch.zeros(3, 1, 8, dtype=torch.long))


def test_boundaries_of_another_sequence_are_refused_causal_or_not():
    """Text-row boundaries in a (non-causal) vision call are an error, not ignored: transformers 5.19
    never passes them there (test_packed_logits_equal_each_sample_alone checks the vision calls)."""
    q, k, v = qkv(6, heads_k=4)
    text_cu = torch.tensor([0, 25, 52, 80, 104], dtype=torch.int32)
    with pytest.raises(ValueError, match="rise from 0 to the 6 tokens"):
        varlen_attention_forward(Attn(False), q, k, v, None, is_causal=False, cu_seq_lens_q=text_cu,
                                 cu_seq_lens_k=text_cu)
    with pytest.raises(ValueError, match="rise from 0 to the 6 tokens"):
        varlen_attention_forward(Attn(True), q, k, v, None, cu_seq_lens_q=text_cu, cu_seq_lens_k=text_cu)
    with pytest.raises(ValueError, match="rise from 0 to the 1 tokens"):  # a causal layer decoding one token too
        varlen_attention_forward(Attn(True), q[:, :, :1], k, v, None, cu_seq_lens_q=text_cu, cu_seq_lens_k=text_cu)


def test_dropout_is_per_segment_seeded_and_off_outside_training():
    q, k, v = qkv(12)
    cu = torch.tensor([0, 5, 12])
    module = Attn()
    module.eval()  # eval: dropout ignored, exactly the no-dropout output
    exact, _ = varlen_attention_forward(module, q, k, v, None, dropout=0.5, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    torch.testing.assert_close(exact, reference(q, k, v, [0, 5, 12], [0, 5, 12], True, 8 ** -0.5), rtol=0, atol=1e-5)
    module.train()
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(varlen_attention_forward(module, q, k, v, None, dropout=0.5, cu_seq_lens_q=cu,
                                             cu_seq_lens_k=cu)[0])
    assert torch.equal(outs[0], outs[1]) and (outs[0] - exact).abs().max() > 1e-2
    # no leakage: sample 1's output has zero gradient with respect to sample 2's queries, keys and values
    grads = torch.autograd.grad(outs[0][:, :5].sum(), (q, k, v))
    assert all(g[:, :, 5:].abs().max() == 0 for g in grads) and all(g[:, :, :5].abs().max() > 0 for g in grads)
    # one segment is what transformers' sdpa path computes with dropout_p, draw for draw (same seed)
    torch.manual_seed(3)
    one, _ = varlen_attention_forward(module, q, k, v, None, dropout=0.5)
    torch.manual_seed(3)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.5, is_causal=True, enable_gqa=True)
    assert torch.equal(one, ref.transpose(1, 2))


def test_kernel_choice():
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    assert choose_kernel("cuda", bf16, dropout=0.0, head_dim=128, varlen_available=True) == KERNEL_VARLEN
    assert choose_kernel("cuda", fp16, dropout=0.0, head_dim=72, varlen_available=True) == KERNEL_VARLEN
    for device, dtype, dropout, dim, available in [("cpu", bf16, 0.0, 128, True), ("cuda", fp32, 0.0, 128, True),
                                                   ("cuda", bf16, 0.1, 128, True), ("cuda", bf16, 0.0, 128, False),
                                                   ("cuda", bf16, 0.0, 264, True), ("cuda", bf16, 0.0, 60, True)]:
        assert choose_kernel(device, dtype, dropout=dropout, head_dim=dim, varlen_available=available) == KERNEL_SDPA


def test_varlen_signature_forms():
    new = varlen_call({"window_size", "scale", "enable_gqa"}, causal=True, scale=0.1, gqa=True)
    assert (new.kwargs, new.repeat_kv, new.prescale) == ({"window_size": (-1, 0), "scale": 0.1, "enable_gqa": True},
                                                         False, False)
    assert varlen_call({"window_size", "scale"}, causal=False, scale=0.1, gqa=True).kwargs == \
        {"window_size": (-1, -1), "scale": 0.1}
    old = varlen_call({"is_causal"}, causal=True, scale=0.1, gqa=False)
    assert (old.kwargs, old.repeat_kv, old.prescale) == ({"is_causal": True}, False, True)
    with pytest.raises(RuntimeError, match="neither window_size nor is_causal"):
        varlen_call({"scale"}, causal=True, scale=0.1, gqa=False)
    # this torch (2.13) has the window_size form, which the CUDA path will use
    assert "window_size" in attention._varlen_params() and "enable_gqa" in attention._varlen_params()


def _torch_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal, scale, enable_gqa):
    """varlen_attn's contract in plain torch (its flash kernel has no CPU build): (T, H, D) in and out."""
    assert query.is_contiguous() and cu_seq_q.dtype == cu_seq_k.dtype == torch.int32
    bounds_q, bounds_k = cu_seq_q.tolist(), cu_seq_k.tolist()
    assert max_q == max(b - a for a, b in zip(bounds_q, bounds_q[1:]))
    assert enable_gqa or query.shape[1] == key.shape[1]
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    t = [x.transpose(0, 1).unsqueeze(0) for x in (query, key, value)]
    return reference(*t, bounds_q, bounds_k, causal, scale)[0]


def varlen_2_13(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1), enable_gqa=False):
    return _torch_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, window_size == (-1, 0), scale,
                         enable_gqa)


def varlen_2_9(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    return _torch_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal, None, False)


@pytest.mark.parametrize("kernel", [varlen_2_13, varlen_2_9])
@pytest.mark.parametrize("causal", [True, False])
def test_cuda_kernel_adapter_on_both_signature_forms(kernel, causal):
    """The CUDA path's call (layout, int32 boundaries, causal flag, GQA, scale) against the contract, on CPU."""
    q, k, v = qkv(12)
    cu = [0, 5, 8, 12]
    segments = find_segments(1, 12, 12, cu_seq_lens_q=torch.tensor(cu), cu_seq_lens_k=torch.tensor(cu))
    tokens = [x[0].transpose(0, 1).contiguous() for x in (q, k, v)]
    out = attention._varlen_kernel(*tokens, segments, causal, 0.3, kernel=kernel)
    torch.testing.assert_close(out[None], reference(q, k, v, cu, cu, causal, 0.3), rtol=0, atol=1e-5)


def test_mask_function_returns_no_dense_mask():
    def never(*args):
        raise AssertionError("the mask pattern must not be evaluated")

    assert varlen_attention_mask(1, 4096, 4096, mask_function=never, attention_mask=None) is None
    unpadded = torch.ones(2, 6, dtype=torch.bool)
    assert varlen_attention_mask(2, 6, 6, mask_function=never, attention_mask=unpadded) is None
    padded = torch.tensor([[True] * 6, [False, False] + [True] * 4])
    assert torch.equal(varlen_attention_mask(2, 6, 6, mask_function=never, attention_mask=padded), padded)


# ----------------------------------------------------------------------------- the real tiny Qwen3-VL
def _without_boundaries(module, query, key, value, attention_mask, **kwargs):
    """Negative control: the same kernel told nothing about where samples start (one segment per row)."""
    for name in ("cu_seq_lens_q", "cu_seq_lens_k", "position_ids"):
        kwargs.pop(name, None)
    return varlen_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _load(tiny_model_dir):
    from swift import get_model_processor

    register()
    register_template()
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NO_BOUNDARIES, _without_boundaries)
    AttentionMaskInterface.register(NO_BOUNDARIES, varlen_attention_mask)
    model, processor = get_model_processor(str(tiny_model_dir), model_type="qwen3_vl", torch_dtype=torch.float32,
                                           attn_impl=ATTN_IMPL, device_map="cpu")
    return model, processor


def _set_impl(model, name):
    for config in (model.config, model.config.text_config, model.config.vision_config):
        config._attn_implementation = name


@pytest.fixture(scope="module")
def encoded(tiny_model_dir, tmp_path_factory):
    from swift import get_template

    model, processor = _load(tiny_model_dir)
    template = get_template(processor, template_type=TEMPLATE_TYPE)
    template.set_mode("train")
    template.model = model
    rows = detection_swift_rows(tmp_path_factory.mktemp("images"))
    return model, template, [template.encode(r, return_length=True) for r in rows]


def _collate(template, encoded, packed, boundaries="cu_seq_lens"):
    template.padding_free = template.packing = packed
    batch = template.data_collator([[dict(e) for e in encoded]] if packed else [dict(e) for e in encoded])
    if packed and boundaries == "position_ids":  # transformers' flash fallback: where the text row restarts
        for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
            batch.pop(key)
    if packed and boundaries == "cu_seq_lens_3_rows":  # ms-swift's stock collator: mrope rows only
        batch["position_ids"] = batch["position_ids"][1:]
    return batch


def _packed_minus_alone(model, template, encoded, boundaries="cu_seq_lens"):
    with torch.no_grad():
        alone = [model(**{k: v for k, v in _collate(template, [e], False).items() if k != "labels"}).logits[0]
                 for e in encoded]
        packed = model(**{k: v for k, v in _collate(template, encoded, True, boundaries).items()
                          if k != "labels"}).logits[0]
    diffs, offset = [], 0
    for e, single in zip(encoded, alone):
        diffs.append((packed[offset:offset + e["length"]] - single).abs().max().item())
        offset += e["length"]
    assert offset == packed.shape[0]
    return diffs


@pytest.mark.parametrize("boundaries", ["cu_seq_lens", "position_ids", "cu_seq_lens_3_rows"])
def test_packed_logits_equal_each_sample_alone(encoded, boundaries):
    model, template, samples = encoded
    _set_impl(model, ATTN_IMPL)
    seen = []
    hook = model.model.language_model.layers[0].self_attn.register_forward_pre_hook(
        lambda m, a, kw: seen.append((kw.get("attention_mask"), sorted(k for k in kw if k.startswith("cu_seq")))),
        with_kwargs=True)
    visual = model.model.visual.blocks[1].register_forward_hook(lambda m, a, out: seen.append(("deepstack", out)))
    vision_keys = []  # what reaches the vision attention: its own cu_seqlens only, never the text row's
    vision = model.model.visual.blocks[0].attn.register_forward_pre_hook(
        lambda m, a, kw: vision_keys.append(sorted(k for k in kw if "cu_seq" in k)), with_kwargs=True)
    try:
        diffs = _packed_minus_alone(model, template, samples, boundaries)
    finally:
        hook.remove()
        visual.remove()
        vision.remove()
    assert vision_keys and all(keys == ["cu_seqlens"] for keys in vision_keys), vision_keys
    assert max(diffs) <= 1e-4, diffs
    assert model.model.visual.deepstack_visual_indexes == [1]  # block 1 feeds DeepStack, and it ran
    assert any(s[0] == "deepstack" for s in seen)
    mask, cu_keys = seen[-1]  # the packed forward: no mask at all, boundaries as intended
    assert mask is None and cu_keys == ([] if boundaries == "position_ids" else ["cu_seq_lens_k", "cu_seq_lens_q"])


def test_negative_control_kernel_without_boundaries_mixes_samples(encoded):
    model, template, samples = encoded
    _set_impl(model, NO_BOUNDARIES)
    try:
        diffs = _packed_minus_alone(model, template, samples)
    finally:
        _set_impl(model, ATTN_IMPL)
    assert diffs[0] <= 1e-4 and min(diffs[1:]) > 1e-2, diffs


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(loss_ref, grads_ref, loss, grads, min_params):
    assert abs(loss - loss_ref) / abs(loss_ref) <= 1e-4
    assert grads_ref.keys() == grads.keys() and len(grads) >= min_params
    for name, ref in grads_ref.items():
        assert (grads[name] - ref).norm() <= 1e-4 * ref.norm() + 1e-9, name


def test_packed_loss_and_gradients_equal_unpacked_sdpa_batch(encoded):
    model, template, samples = encoded
    model.train()
    try:
        _set_impl(model, "sdpa")  # the reference is ms-swift's padded batch on the standard kernel
        loss_u, grads_u = _loss_and_grads(model, _collate(template, samples, False))
        _set_impl(model, ATTN_IMPL)
        loss_p, grads_p = _loss_and_grads(model, _collate(template, samples, True))
        loss_pad, grads_pad = _loss_and_grads(model, _collate(template, samples, False))  # ours on the padded batch
    finally:
        model.eval()
        model.zero_grad()
    _assert_same(loss_u, grads_u, loss_p, grads_p, min_params=40)
    _assert_same(loss_u, grads_u, loss_pad, grads_pad, min_params=40)


def test_dora_with_gradient_checkpointing_packed_equals_unpacked(tiny_model_dir, encoded):
    from peft import LoraConfig, get_peft_model

    _, template, samples = encoded
    model, _ = _load(tiny_model_dir)
    model.gradient_checkpointing_enable()
    # init_lora_weights=False: B is random, so every adapter matrix gets a non-zero gradient to compare
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=True,
                                             init_lora_weights=False))
    model.train()
    calls = []
    layer = model.base_model.model.model.language_model.layers[0]
    layer.self_attn.register_forward_hook(lambda m, a, out: calls.append(1))
    loss_u, grads_u = _loss_and_grads(model, _collate(template, samples, False))
    calls.clear()
    loss_p, grads_p = _loss_and_grads(model, _collate(template, samples, True))
    assert layer.gradient_checkpointing and len(calls) == 2  # forward + recompute in backward, boundaries kept
    assert any("lora_magnitude_vector" in n for n in grads_p) and any("lora_A" in n for n in grads_p)
    _assert_same(loss_u, grads_u, loss_p, grads_p, min_params=60)


# ----------------------------------------------------------------------------- no L x L tensor
class LargestTensor(TorchDispatchMode):
    """Records the largest output (elements, or its storage's elements for a view) of every op that runs."""

    def __init__(self):
        super().__init__()
        self.largest, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                size = max(t.numel(), t.untyped_storage().nbytes() // max(t.element_size(), 1))
                if size > self.largest:
                    self.largest, self.op = size, str(func)
        return out


def _decoder_step(decoder, lengths, with_cu):
    n = sum(lengths)
    text = torch.cat([torch.arange(m) for m in lengths])[None]
    kwargs = {"position_ids": text[None].expand(4, 1, n)}
    if with_cu:
        cu = torch.tensor([0] + [sum(lengths[:i + 1]) for i in range(len(lengths))], dtype=torch.int32)
        kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
    embeds = torch.randn(1, n, decoder.config.hidden_size, generator=torch.Generator().manual_seed(0),
                         requires_grad=True)
    with LargestTensor() as probe:
        out = decoder(inputs_embeds=embeds, use_cache=False, **kwargs).last_hidden_state
        out.square().mean().backward()
    return probe


def test_no_tensor_of_l_squared_elements_for_a_4096_token_pack(encoded):
    from transformers.masking_utils import AttentionMaskInterface

    model, _, _ = encoded
    decoder = model.model.language_model
    lengths, n = [1024, 1024, 1024, 1024], 4096
    returned = []

    def recording_mask(*args, **kwargs):
        returned.append(varlen_attention_mask(*args, **kwargs))
        return returned[-1]

    AttentionMaskInterface.register(ATTN_IMPL, recording_mask)
    try:
        _set_impl(model, ATTN_IMPL)
        for with_cu in (True, False):
            probe = _decoder_step(decoder, lengths, with_cu)
            assert probe.largest < n * n, (probe.largest, probe.op)
    finally:
        register()
    assert returned == [None, None]  # one mask per forward, and it is no mask
    # the detector does catch the dense path: sdpa gets a (1, 1, L, L) block-diagonal mask
    try:
        _set_impl(model, "sdpa")
        probe = _decoder_step(decoder, lengths, with_cu=False)
    finally:
        _set_impl(model, ATTN_IMPL)
    assert probe.largest >= n * n, (probe.largest, probe.op)
