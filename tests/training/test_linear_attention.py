"""Linear-attention isolation on the tiny hybrid Qwen3.5 decoder (dense and MoE, fp32, CPU): packed logits equal
each sample alone, loss and gradients equal the unpacked batch (also DoRA + gradient checkpointing), plain
transformers leaks (negative control), and ms-swift's replacement forward no longer refuses a packed row."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet
from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeGatedDeltaNet

from helpers import REPO, child_environment
from swift_plugins.dev.hybrid_decoder import VOCAB, build
from swift_plugins.errors import UserError
from swift_plugins.training import attention
from swift_plugins.training.linear_attention import (BACKEND_PER_SEGMENT, Isolation, attention_line, install,
                                                     isolated_forward, segment_bounds, uninstall)

LENGTHS = [37, 2, 29, 20]  # one sample shorter than the 4-tap convolution window

# transformers' own layer forwards as imported (collection, before any test ran): loading a Qwen3.5
# checkpoint through ms-swift in another test of this process replaces them on the class, and these tests
# are about transformers' layer (ms-swift's replacement: the subprocess test below).
TRANSFORMERS_FORWARD = {cls: cls.forward for cls in (Qwen3_5GatedDeltaNet, Qwen3_5MoeGatedDeltaNet)}


@pytest.fixture(autouse=True)
def transformers_linear_attention(monkeypatch):
    for cls, forward in TRANSFORMERS_FORWARD.items():
        monkeypatch.setattr(cls, "forward", forward)


def _samples(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g) for n in LENGTHS]


def _cu():
    return torch.tensor([0] + [sum(LENGTHS[:i + 1]) for i in range(len(LENGTHS))], dtype=torch.int32)


def _packed_inputs(samples, boundaries):
    row = torch.cat(samples)[None]
    kwargs = {"input_ids": row, "position_ids": torch.cat([torch.arange(len(s)) for s in samples])[None]}
    if boundaries == "cu_seq_lens":
        cu = _cu()
        kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(LENGTHS), max_length_k=max(LENGTHS))
    return kwargs


def _packed_minus_alone(model, samples, boundaries="cu_seq_lens"):
    with torch.no_grad():
        alone = [model(input_ids=s[None]).logits[0] for s in samples]
        packed = model(**_packed_inputs(samples, boundaries)).logits[0]
    bounds = _cu().tolist()
    return [(packed[a:b] - one).abs().max().item() for a, b, one in zip(bounds, bounds[1:], alone)]


@pytest.fixture(scope="module", params=[False, True], ids=["dense", "moe"])
def model(request):
    attention.register()
    return build(moe=request.param, seed=0, attn_impl=attention.ATTN_IMPL)


@pytest.mark.parametrize("boundaries", ["cu_seq_lens", "position_ids"])
def test_packed_logits_equal_each_sample_alone(model, boundaries):
    isolation = install(model)
    try:
        assert isolation.layers == ["model.layers.0", "model.layers.1", "model.layers.2"]
        assert isolation.total_layers == 4 and isolation.backend == BACKEND_PER_SEGMENT
        assert install(model) is isolation  # idempotent
        diffs = _packed_minus_alone(model, _samples(), boundaries)
    finally:
        uninstall(model)
    assert max(diffs) <= 1e-4, diffs


def test_negative_control_plain_transformers_mixes_samples(model):
    """Without install the same pack leaks through the conv window and the state: every later sample differs."""
    diffs = _packed_minus_alone(model, _samples())
    assert diffs[0] <= 1e-4 and min(diffs[1:]) > 1e-2, diffs


def _labels(samples):
    """Each sample's first label is -100, as ms-swift packs them: no token learns across a boundary."""
    return [torch.cat([torch.tensor([-100]), s[1:]]) for s in samples]


def _unpacked_batch(samples):
    n = max(LENGTHS)
    pad = lambda t, v: torch.cat([t, torch.full((n - len(t),), v, dtype=t.dtype)])  # noqa: E731
    return {"input_ids": torch.stack([pad(s, 0) for s in samples]),
            "attention_mask": torch.stack([pad(torch.ones(len(s), dtype=torch.long), 0) for s in samples]),
            "labels": torch.stack([pad(label, -100) for label in _labels(samples)])}


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(reference, got, min_params):
    (loss_ref, grads_ref), (loss, grads) = reference, got
    assert abs(loss - loss_ref) / abs(loss_ref) <= 1e-4, (loss, loss_ref)
    assert grads_ref.keys() == grads.keys() and len(grads) >= min_params
    for name, ref in grads_ref.items():
        assert (grads[name] - ref).norm() <= 1e-4 * ref.norm() + 1e-9, name


def _packed_vs_unpacked(model, samples):
    """(unpacked token-mean batch, the same samples packed in one row) losses and gradients, in train mode."""
    packed = dict(_packed_inputs(samples, "cu_seq_lens"), labels=torch.cat(_labels(samples))[None])
    model.train()
    try:
        return _loss_and_grads(model, _unpacked_batch(samples)), _loss_and_grads(model, packed)
    finally:
        model.eval()
        model.zero_grad()


def test_packed_loss_and_gradients_equal_unpacked_batch(model):
    samples = _samples()
    install(model)
    try:
        unpacked, packed = _packed_vs_unpacked(model, samples)
    finally:
        uninstall(model)
    _assert_same(unpacked, packed, min_params=30)
    _, leaking = _packed_vs_unpacked(model, samples)  # the control: plain transformers' packed gradients differ
    assert max((leaking[1][n] - g).norm() / g.norm() for n, g in unpacked[1].items()) > 1e-2


def test_dora_with_gradient_checkpointing_packed_equals_unpacked(model):
    from peft import LoraConfig, get_peft_model

    moe = hasattr(model.model.layers[0].mlp, "experts")
    base = build(moe=moe, seed=0, attn_impl=attention.ATTN_IMPL)
    base.gradient_checkpointing_enable()
    # init_lora_weights=False: B is random, so every adapter matrix gets a non-zero gradient to compare
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=True,
                                                 init_lora_weights=False))
    install(peft_model)
    linear = peft_model.base_model.model.model.layers[1].linear_attn
    calls = []
    linear.register_forward_hook(lambda m, a, out: calls.append(out.shape[1]))
    unpacked, packed = _packed_vs_unpacked(peft_model, _samples())
    # the packed forward and its recompute in backward both ran isolated over the whole row
    assert base.model.layers[1].gradient_checkpointing and calls[-2:] == [sum(LENGTHS)] * 2
    assert any("lora_magnitude_vector" in n and "linear_attn" in n for n in packed[1])
    _assert_same(unpacked, packed, min_params=60)


# ----------------------------------------------------------------------------- contracts
def test_segment_bounds_and_their_errors():
    assert segment_bounds(2, 6, {"cu_seq_lens_q": torch.tensor([0, 4, 6, 12])}) == [0, 4, 6, 12]
    assert segment_bounds(1, 6, {"position_ids": torch.arange(6)}) is None
    for bad in ([0, 4, 7], [1, 6], [0, 5, 3, 6]):
        with pytest.raises(ValueError, match="cu_seq_lens_q must rise from 0 to the 6 tokens"):
            segment_bounds(1, 6, {"cu_seq_lens_q": torch.tensor(bad)})


def test_packed_row_with_a_cache_or_padding_is_refused(model):
    linear = model.model.layers[0].linear_attn
    hidden = torch.randn(1, 12, 64)
    cu = torch.tensor([0, 5, 12])
    with pytest.raises(ValueError, match="decoding packed samples is not supported"):
        isolated_forward(linear, hidden, cache_params=object(), cu_seq_lens_q=cu)
    with pytest.raises(ValueError, match="either a padding mask or cu_seq_lens"):
        isolated_forward(linear, hidden, attention_mask=torch.tensor([[1] * 11 + [0]]), cu_seq_lens_q=cu)
    one = isolated_forward(linear, hidden, cu_seq_lens_q=torch.tensor([0, 12]))  # one segment: the class forward
    torch.testing.assert_close(one, type(linear).forward(linear, hidden), rtol=0, atol=0)


class Mixer(torch.nn.Module):
    def forward(self, hidden_states, **kwargs):
        return hidden_states


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear_attn = Mixer()


def test_unknown_linear_attention_class_refuses_packing_in_one_line():
    model = torch.nn.Sequential(Layer())
    with pytest.raises(UserError) as info:
        install(model)
    message = str(info.value)
    assert "\n" not in message and message.startswith("model: layer_types: linear-attention layers of class Mixer")
    assert message.endswith("(set training.packing false)")
    assert not hasattr(model[0].linear_attn, "_swiftpack_isolation") and "forward" not in vars(model[0].linear_attn)


def test_uninstall_restores_the_class_forward_and_removes_the_hooks(model):
    layer = model.model.layers[0]
    install(model)
    assert "forward" in vars(layer.linear_attn) and len(layer._forward_pre_hooks) == 1
    uninstall(model)
    assert "forward" not in vars(layer.linear_attn) and not layer._forward_pre_hooks
    uninstall(model)  # nothing installed: nothing to do


def test_attention_line_names_both_kinds_of_layer():
    line = attention_line("swiftpack_varlen", Isolation(["a", "b", "c"], 4, BACKEND_PER_SEGMENT))
    assert line.startswith("full attention: swiftpack_varlen; linear attention (3 of 4 layers): per-segment")


# ----------------------------------------------------------------------------- with ms-swift's replacement forward
COMPOSE = textwrap.dedent("""
    import torch
    from swift.model.models import qwen  # ms-swift 4.6's module with the Qwen3.5 loaders
    from swift_plugins.dev.hybrid_decoder import build
    from swift_plugins.training import attention, linear_attention
    attention.register()
    qwen._patch_qwen3_5_linear_attention_sequence_parallel()  # what ms-swift's Qwen3.5 loaders do
    for moe in (False, True):
        model = build(moe=moe, seed=0, attn_impl=attention.ATTN_IMPL)
        assert getattr(type(model.model.layers[0].linear_attn), "_ms_swift_sp_linear_patched")
        lengths = [37, 2, 29]
        ids = [torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(n)) for n in lengths]
        cu = torch.tensor([0, 37, 39, 68], dtype=torch.int32)
        row = dict(input_ids=torch.cat(ids)[None], position_ids=torch.cat([torch.arange(n) for n in lengths])[None],
                   cu_seq_lens_q=cu, cu_seq_lens_k=cu)
        try:
            model(**row)
            print("refused: no")
        except ImportError as e:
            print("refused:", str(e).split(";")[0])
        isolation = linear_attention.install(model)
        with torch.no_grad():
            packed = model(**row).logits[0]
            alone = torch.cat([model(input_ids=i[None]).logits[0] for i in ids])
        print("backend:", isolation.backend, "diff:", float((packed - alone).abs().max()) <= 1e-4)
""")


def test_ms_swift_replacement_forward_refuses_without_us_and_is_isolated_with_us():
    """In a child process: ms-swift's class patch is process-wide and never undone."""
    out = subprocess.run([sys.executable, "-c", COMPOSE], cwd=REPO, env=child_environment(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(("refused:", "backend:"))]
    refusal = "refused: Qwen3.5 linear attention packing/padding-free with multiple sequences requires " \
              "flash-linear-attention"
    assert lines == [refusal, f"backend: {BACKEND_PER_SEGMENT} diff: True"] * 2, out.stdout


# ----------------------------------------------------------------------------- GPU: flash-linear-attention
GPU_FLA = textwrap.dedent("""
    import torch
    from swift.model.models import qwen
    from swift_plugins.dev.hybrid_decoder import build
    from swift_plugins.training import attention, linear_attention
    attention.register()
    qwen._patch_qwen3_5_linear_attention_sequence_parallel()
    qwen._try_import_flash_linear_attention_kernels()
    seen = []
    def spy(name, kernel):
        def run(*args, **kwargs):
            seen.append((name, kwargs.get("cu_seqlens").tolist()))
            return kernel(*args, **kwargs)
        return run
    # test-only spies in this child process: record what ms-swift hands fla's kernels
    qwen.causal_conv1d = spy("causal_conv1d", qwen.causal_conv1d)
    qwen.chunk_gated_delta_rule = spy("chunk_gated_delta_rule", qwen.chunk_gated_delta_rule)
    model = build(seed=0, attn_impl=attention.ATTN_IMPL).cuda()
    lengths = [300, 2, 129]
    ids = [torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(n)).cuda() for n in lengths]
    cu = torch.tensor([0, 300, 302, 431], dtype=torch.int32, device="cuda")
    isolation = linear_attention.install(model)
    with torch.no_grad():
        packed = model(input_ids=torch.cat(ids)[None], cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                       position_ids=torch.cat([torch.arange(n) for n in lengths])[None].cuda()).logits[0]
        alone = torch.cat([model(input_ids=i[None]).logits[0] for i in ids])
    print("backend:", isolation.backend)
    print("calls:", sorted(set((n, tuple(c)) for n, c in seen)))
    print("diff:", float((packed - alone).abs().max()))
""")


@pytest.mark.gpu
def test_gpu_flash_linear_attention_gets_the_boundaries():
    out = subprocess.run([sys.executable, "-c", GPU_FLA], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    assert lines["backend"] == "flash-linear-attention varlen (ms-swift)"
    bounds = (0, 300, 302, 431)
    assert lines["calls"] == str([("causal_conv1d", bounds), ("chunk_gated_delta_rule", bounds)])
    assert float(lines["diff"]) <= 2e-3  # fla's chunked kernels in fp32 on tensor cores


def test_a_deep_copy_carries_its_own_isolation(model):
    """ms-swift and the tests deep-copy models: the copy's forwards and hooks are its own, and so is uninstall."""
    import copy

    install(model)
    try:
        twin = copy.deepcopy(model)
        linear, twin_linear = model.model.layers[0].linear_attn, twin.model.layers[0].linear_attn
        assert twin_linear.forward.__self__ is twin_linear
        uninstall(twin)
        assert "forward" not in vars(twin_linear) and not twin.model.layers[0]._forward_pre_hooks
        assert "forward" in vars(linear) and len(model.model.layers[0]._forward_pre_hooks) == 1
    finally:
        uninstall(model)
