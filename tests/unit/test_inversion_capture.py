"""Feature capture patches driven the way ComfyUI's transformer blocks call them (pure torch)."""

import pytest
import torch

from comfyui_videoedit.adapters.source import install_capture
from comfyui_videoedit.attention.capture import (
    CAPTURE_KEY,
    AttnInputCapture,
    CaptureSpec,
    FeatureStore,
    QKCapture,
    capture_pass,
)


def naive_attention(q, k, v, heads):
    b, n, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, n, c)


class FakeResBlock(torch.nn.Module):
    """ResBlock shape: out = skip_connection(x) + residual(x, emb)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.skip_connection = torch.nn.Conv2d(cin, cout, 1)
        self.body = torch.nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x, emb):
        return self.skip_connection(x) + self.body(x) * emb.view(-1, 1, 1, 1)


class FakeUNet(torch.nn.Module):
    """Two "attention layers" called like BasicTransformerBlock calls its patches, and one
    output block holding a ResBlock."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.to_q = torch.nn.Linear(8, 8)
        self.to_k = torch.nn.Linear(8, 8)
        self.to_v = torch.nn.Linear(8, 8)
        self.output_blocks = torch.nn.ModuleList([torch.nn.Sequential(FakeResBlock(4, 4)) for _ in range(5)])
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3

    def forward(self, x, tokens, options):
        patches = options.get("patches", {})
        replace = options.get("patches_replace", {}).get("attn1", {})
        extra = {k: v for k, v in options.items() if k not in ("patches", "patches_replace")}
        outs = []
        for block in (("input", 1), ("output", 4)):
            extra["block"], extra["block_index"], extra["n_heads"] = block, 0, 2
            n = tokens
            for p in patches.get("attn1_patch", []):
                n, _, _ = p(n, n, n, extra)
            key = (*block, 0)
            if key in replace:
                outs.append(replace[key](self.to_q(n), self.to_k(n), self.to_v(n), extra))
            else:
                outs.append(naive_attention(self.to_q(n), self.to_k(n), self.to_v(n), 2))
        h = self.output_blocks[4][0](x, torch.ones(x.shape[0]))
        return outs, h


class FakePatcher:
    """The few ModelPatcher methods install_capture uses."""

    def __init__(self, options=None):
        self.model_options = {"transformer_options": options or {}}

    def clone(self):
        import copy

        c = FakePatcher()
        c.model_options = copy.deepcopy(self.model_options)
        return c

    def set_model_attn1_patch(self, patch):
        self.model_options["transformer_options"].setdefault("patches", {}).setdefault("attn1_patch", []).append(patch)

    def set_model_attn1_replace(self, patch, name, number, index):
        (self.model_options["transformer_options"].setdefault("patches_replace", {}).setdefault("attn1", {}))[
            (name, number, index)
        ] = patch


def test_capture_records_requested_features_and_changes_nothing():
    unet = FakeUNet()
    x, tokens = torch.randn(3, 4, 5, 5), torch.randn(3, 6, 8)
    plain_attn, plain_h = unet(x, tokens, {})
    spec = CaptureSpec(attn1_inputs=[("output", 4, 0)], qk=[("output", 4, 0)], resnets=[("output", 4)])
    m = install_capture(FakePatcher(), spec, naive_attention)
    options = m.model_options["transformer_options"]
    store, (attn, h) = capture_pass(lambda o: unet(x, tokens, o), options, spec, diffusion_model=unet)
    assert CAPTURE_KEY not in options  # the caller's dict is not touched
    for a, b in zip(attn, plain_attn):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(h, plain_h, atol=1e-6)
    assert set(store.attn1_inputs) == {("output", 4, 0)}  # ("input", 1, 0) was not asked for
    assert torch.equal(store.attn1_inputs[("output", 4, 0)], tokens)
    assert torch.allclose(store.q[("output", 4, 0)], unet.to_q(tokens))
    assert torch.allclose(store.k[("output", 4, 0)], unet.to_k(tokens))
    block = unet.output_blocks[4][0]
    assert torch.allclose(store.resnets[("output", 4, 0)], plain_h - block.skip_connection(x), atol=1e-6)
    assert store.missing() == []
    assert sorted(store.flat()) == ["attn1_inputs/output.4.0", "k/output.4.0", "q/output.4.0", "resnets/output.4.0"]
    # hooks are gone after the pass
    assert not block._forward_hooks


def test_patches_are_inert_outside_a_capture_pass():
    unet = FakeUNet()
    x, tokens = torch.randn(2, 4, 5, 5), torch.randn(2, 6, 8)
    spec = CaptureSpec(attn1_inputs="all", qk=[("input", 1, 0)])
    m = install_capture(FakePatcher(), spec, naive_attention)
    attn, _ = unet(x, tokens, m.model_options["transformer_options"])
    plain, _ = unet(x, tokens, {})
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(attn, plain))
    store, _ = capture_pass(lambda o: unet(x, tokens, o), m.model_options["transformer_options"], spec)
    assert set(store.attn1_inputs) == {("input", 1, 0), ("output", 4, 0)}
    assert set(store.q) == {("input", 1, 0)}


def test_qk_capture_chains_an_existing_replace_patch():
    calls = []

    def previous(q, k, v, extra):
        calls.append(extra["block"])
        return 0.5 * naive_attention(q, k, v, extra["n_heads"])

    unet = FakeUNet()
    x, tokens = torch.randn(1, 4, 5, 5), torch.randn(1, 6, 8)
    base = FakePatcher()
    base.set_model_attn1_replace(previous, "output", 4, 0)
    before, _ = unet(x, tokens, base.model_options["transformer_options"])
    spec = CaptureSpec(qk=[("output", 4, 0)])
    m = install_capture(base, spec, naive_attention)
    store, (after, _) = capture_pass(lambda o: unet(x, tokens, o), m.model_options["transformer_options"], spec)
    assert torch.allclose(after[1], before[1]) and len(calls) == 2
    assert ("output", 4, 0) in store.q
    assert base.model_options["transformer_options"]["patches_replace"]["attn1"][("output", 4, 0)] is previous


def test_store_can_move_features_and_spec_validates_keys():
    store = FeatureStore(CaptureSpec(), dtype=torch.float16)
    store.record("q", ("output", 4, 0), torch.ones(2, 3))
    assert store.q[("output", 4, 0)].dtype == torch.float16 and store.nbytes() == 12
    with pytest.raises(ValueError, match="like"):
        CaptureSpec(qk=[("decoder", 4, 0)])
    with pytest.raises(ValueError, match="layer 0"):
        CaptureSpec(resnets=[("output", 4, 1)])
    with pytest.raises(ValueError, match="diffusion model"):
        capture_pass(lambda o: None, {}, CaptureSpec(resnets=[("output", 4)]))
    assert AttnInputCapture()(1, 2, 3, {}) == (1, 2, 3)
    assert QKCapture(("output", 4, 0), naive_attention).cache_key() == ["videoedit.capture.qk", ["output", 4, 0], None]
