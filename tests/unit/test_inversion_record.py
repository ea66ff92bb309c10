"""VE_INVERSION record and source-branch replay (pure torch)."""

import pytest
import torch

from comfyui_videoedit.inversion.record import InversionRecord, record_from_tensors, record_tensors
from comfyui_videoedit.inversion.replay import SourceReplay

SIGMAS = torch.tensor([8.0, 3.0, 1.0, 0.25, 0.0])


def make_record(frames=4, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(SIGMAS), frames, 4, 6, 6, generator=g)  # VE latents per sigma
    vp = x / torch.sqrt(1 + SIGMAS.view(-1, 1, 1, 1, 1) ** 2)
    cond = [[torch.randn(1, 77, 32, generator=g), {"pooled_output": torch.randn(1, 32, generator=g)}]]
    rec = InversionRecord(
        sigmas=SIGMAS.clone(),
        latents_vp=vp.half(),
        x_T=x[0].clone(),
        conditioning=cond,
        weights_id="w" * 64,
        patches_id="p" * 64,
        latent_hash="l" * 64,
        key="k" * 64,
        info={"scheduler": "ddim_uniform"},
        **kw,
    )
    return rec, x


def test_latent_at_returns_exact_cached_rows_in_both_spaces():
    rec, x = make_record()
    frames = [3, 0]
    for i, s in enumerate(SIGMAS.tolist()):
        ve = rec.latent_at(s, frames)
        vp = rec.latent_at(s, frames, space="vp")
        naive_vp = rec.latents_vp[i, frames].float() if i else x[0, frames] / (1 + s * s) ** 0.5
        assert torch.allclose(vp, naive_vp, atol=1e-6)
        assert torch.allclose(ve, naive_vp * (1 + s * s) ** 0.5, atol=1e-5)
        assert torch.allclose(ve, x[i, frames], atol=5e-3 * max(1.0, s))  # fp16 storage
    assert torch.equal(rec.latent_at(8.0), x[0])  # x_T is kept exact (fp32)
    assert rec.step_index(8.0 * (1 + 1e-6)) == 0  # float round trip of a sampler's sigma
    assert rec.num_frames == 4 and rec.num_steps == 4 and rec.latent_shape == (4, 6, 6)


def test_unknown_sigma_names_both_schedules():
    rec, _ = make_record()
    with pytest.raises(ValueError, match=r"sigma 2\.5 is not in the inversion's schedule \[8, 3, 1, 0\.25, 0\]"):
        rec.latent_at(2.5)
    with pytest.raises(ValueError, match=r"sampler's schedule .*not in the inversion's"):
        rec.check_schedule(torch.tensor([8.0, 2.0, 0.0]))
    rec.check_schedule(torch.tensor([8.0, 1.0, 0.0]))  # a subset of cached sigmas is fine
    with pytest.raises(ValueError, match="out of range"):
        rec.latent_at(3.0, [4])


def test_with_null_text_is_a_copy_and_one_embedding_per_step():
    rec, _ = make_record()
    emb = torch.randn(4, 77, 32)
    out = rec.with_null_text(emb, 7.5)
    assert rec.null_text is None and out.null_text.shape == (4, 77, 32)
    assert out.latents_vp is rec.latents_vp  # shallow: no copy of the big tensors
    assert torch.equal(out.null_text_at(3.0)[0], emb[1])
    with pytest.raises(ValueError, match="no null-text"):
        rec.null_text_at(8.0)
    with pytest.raises(ValueError, match="one embedding per step"):
        rec.with_null_text(torch.randn(5, 77, 32), 7.5)


def test_weights_check_message():
    rec, _ = make_record()
    rec.check_weights("w" * 64)
    with pytest.raises(ValueError, match="different model"):
        rec.check_weights("x" * 64)


def test_serialisation_round_trip():
    rec, _ = make_record()
    rec = rec.with_null_text(torch.randn(4, 77, 32), 7.5)
    tensors, meta = record_tensors(rec)
    back = record_from_tensors(tensors, meta, rec.conditioning)
    for name in ("sigmas", "latents_vp", "x_T", "null_text"):
        assert torch.equal(getattr(back, name), getattr(rec, name))
    assert (back.weights_id, back.patches_id, back.key, back.null_text_cfg) == (
        rec.weights_id,
        rec.patches_id,
        rec.key,
        7.5,
    )


def test_source_replay_serves_latents_and_conditioning():
    rec, x = make_record()
    replay = SourceReplay(rec)
    assert replay.num_steps == 4 and replay.step_index(1.0) == 2
    frames = torch.tensor([1, 2])
    assert torch.equal(replay.latent(1.0, frames), rec.latent_at(1.0, frames))
    assert torch.allclose(replay.unet_input(1.0, frames), replay.latent(1.0, frames) / 2**0.5)
    like = torch.zeros(1, dtype=torch.float64)
    ctx, y = replay.unet_conditioning(2, like)
    assert ctx.shape == (2, 77, 32) and ctx.dtype == torch.float64 and y is None
    assert torch.equal(ctx[1].float(), rec.conditioning[0][0][0])
    per_frame = torch.randn(4, 77, 32)
    ctx2, _ = SourceReplay(rec, context=per_frame).unet_conditioning(2, like, frames=frames)
    assert torch.equal(ctx2.float(), per_frame[1:3])
    with pytest.raises(ValueError, match="frame indices"):
        SourceReplay(rec, context=per_frame).unet_conditioning(3, like)
