"""The inversion's feature cache through the real nodes (tiny model): a second edit on the same
inversion with the same settings reads the source features instead of running the source pass,
and gives exactly what the uncached edit gives — also for another target prompt, from disk after
a "restart", when the cap is hit, and after an interrupt at any UNet call."""

import dataclasses

import pytest
import torch

from ve_testkit.interrupts import unet_calls
from ve_testkit.models import encode_prompt
from ve_testkit.runs import sampler_custom

FRAMES, STEPS = 5, 3
TOKENFLOW = dict(
    window=2,
    pnp_attn_t=0.5,
    pnp_f_t=0.8,
    seed=1,
    nn_feature="input",
    blend="official",
    pnp_attn_blocks="output 4-11",
    pnp_resnet_blocks="output 4",
)


@pytest.fixture(scope="module")
def setup(host, pack_nodes, tiny_model, tiny_clip):
    g = torch.Generator().manual_seed(11)
    with torch.inference_mode():
        return {
            "latent": {"samples": torch.randn(FRAMES, 4, 8, 8, generator=g) * 0.5},
            "src": encode_prompt(tiny_clip, "a car"),
            "pos": encode_prompt(tiny_clip, "a red car"),
            "pos2": encode_prompt(tiny_clip, "a blue car"),
            "neg": encode_prompt(tiny_clip, ""),
        }


def _invert(model, s, tmp_path, mode="memory", cap_mb=0):
    from comfyui_videoedit.adapters.inversion import invert_video

    record, _ = invert_video(
        model,
        s["latent"],
        s["src"],
        steps=STEPS,
        cache_mode="memory",
        cache_limit_mb=0,
        feature_cache=mode,
        feature_cache_mb=cap_mb,
        root=tmp_path,
    )
    return record


def _sample(host, model, s, record, positive="pos"):
    """SamplerCustom from the inversion's x_T along its sigmas (cfg 5, euler)."""
    return sampler_custom(host, model, s[positive], s["neg"], record.sigmas.clone(), {"samples": record.x_T.clone()})


def _tokenflow(model, record):
    from comfyui_videoedit.nodes.tokenflow import ApplyTokenFlow

    return ApplyTokenFlow.execute(model, record, **TOKENFLOW).args[0]


def _counted(model, run, *args):
    """``(run(*args), UNet rows seen)``: the batch entries the diffusion model ran."""
    rows = []
    handle = model.model.diffusion_model.middle_block[0].register_forward_pre_hook(
        lambda m, a: rows.append(int(a[0].shape[0]))
    )
    try:
        return run(*args), sum(rows)
    finally:
        handle.remove()


def _fresh_memory():
    from comfyui_videoedit.inversion.feature_cache import MEMORY

    MEMORY.clear()


def test_tokenflow_second_edit_skips_the_source_pass_and_is_identical(
    host, tiny_model, setup, tmp_path, inference_mode
):
    _fresh_memory()
    cached_inv = _invert(tiny_model, setup, tmp_path)
    plain_inv = dataclasses.replace(cached_inv, feature_cache=None)
    for positive in ("pos", "pos2"):
        reference, plain_rows = _counted(
            tiny_model, _sample, host, _tokenflow(tiny_model, plain_inv), setup, plain_inv, positive
        )
        first = _sample(host, _tokenflow(tiny_model, cached_inv), setup, cached_inv, positive)
        # a new Apply TokenFlow (a new MODEL object) on the same inversion and settings
        second, second_rows = _counted(
            tiny_model, _sample, host, _tokenflow(tiny_model, cached_inv), setup, cached_inv, positive
        )
        assert torch.equal(first, reference), "filling the cache changed the edit"
        assert torch.equal(second, reference), "the edit served from the cache differs from the uncached one"
        # per step the source rows are gone: one per frame (propagation) + one per keyframe (window 2: 3)
        assert second_rows == plain_rows - STEPS * (FRAMES + 3), (plain_rows, second_rows)


def test_another_setting_does_not_read_the_cache(host, tiny_model, setup, tmp_path, inference_mode):
    from comfyui_videoedit.nodes.tokenflow import ApplyTokenFlow

    _fresh_memory()
    inv = _invert(tiny_model, setup, tmp_path)
    _sample(host, _tokenflow(tiny_model, inv), setup, inv)
    other = dict(TOKENFLOW, seed=7)
    plain = dataclasses.replace(inv, feature_cache=None)
    expected = _sample(host, ApplyTokenFlow.execute(tiny_model, plain, **other).args[0], setup, plain)
    got = _sample(host, ApplyTokenFlow.execute(tiny_model, inv, **other).args[0], setup, inv)
    assert torch.equal(got, expected)


def test_disk_cache_serves_a_new_process_and_survives_bad_files(host, tiny_model, setup, tmp_path, inference_mode):
    from comfyui_videoedit.inversion.feature_cache import MEMORY

    _fresh_memory()
    inv = _invert(tiny_model, setup, tmp_path, mode="disk")
    plain = dataclasses.replace(inv, feature_cache=None)
    reference = _sample(host, _tokenflow(tiny_model, plain), setup, plain)
    _sample(host, _tokenflow(tiny_model, inv), setup, inv)
    groups = [p for p in (tmp_path / "features").iterdir() if p.is_dir()]
    assert len(groups) == 1 and len([p for p in groups[0].iterdir() if p.is_dir()]) == STEPS
    MEMORY.clear()  # a restart: only the disk copy is left
    again = _invert(tiny_model, setup, tmp_path, mode="disk")
    model = _tokenflow(tiny_model, again)
    assert torch.equal(_sample(host, model, setup, again), reference)
    # a corrupted entry is recomputed, not served
    MEMORY.clear()
    entry = sorted(p for p in groups[0].iterdir() if p.is_dir())[0]
    (entry / "tensors.safetensors").write_bytes(b"garbage")
    again = _invert(tiny_model, setup, tmp_path, mode="disk")
    assert torch.equal(_sample(host, _tokenflow(tiny_model, again), setup, again), reference)
    assert any("corrupt" in n or "stale" in n for n in again.feature_cache.notes)


def test_the_cap_falls_back_to_recomputing(host, tiny_model, setup, tmp_path, inference_mode):
    _fresh_memory()
    inv = _invert(tiny_model, setup, tmp_path, cap_mb=0)
    inv.feature_cache.limit = 1  # one byte: nothing fits
    plain = dataclasses.replace(inv, feature_cache=None)
    reference = _sample(host, _tokenflow(tiny_model, plain), setup, plain)
    model = _tokenflow(tiny_model, inv)
    assert torch.equal(_sample(host, model, setup, inv), reference)
    assert torch.equal(_sample(host, model, setup, inv), reference)
    assert any("cap" in n for n in inv.feature_cache.notes)


def test_flatten_pnp_second_edit_is_identical(host, tiny_model, setup, tmp_path, inference_mode):
    from comfyui_videoedit.nodes.flatten import ApplyFLATTEN, SampleTrajectories

    _fresh_memory()
    flow = torch.zeros(FRAMES - 1, 64, 64, 2)
    flow[..., 0] = 8.0
    (ts,) = SampleTrajectories.execute(flow, setup["latent"], 0).args

    def flatten(model, inversion=None):
        args = dict(
            mode="bounded",
            levels="highest",
            old_qk=False,
            anchor_stride=2,
            max_anchors=2,
            inject_step=0.7,
            pnp_attn_blocks="output 4-9",
            pnp_resnet_blocks="output 3, 4, 6",
        )
        return ApplyFLATTEN.execute(model, ts, inversion=inversion, **args).args[0]

    base = flatten(tiny_model)
    inv = _invert(base, setup, tmp_path)
    plain = dataclasses.replace(inv, feature_cache=None)
    reference = _sample(host, flatten(tiny_model, plain), setup, plain)
    _, plain_rows = _counted(tiny_model, _sample, host, flatten(tiny_model, plain), setup, plain)
    assert torch.equal(_sample(host, flatten(tiny_model, inv), setup, inv), reference)
    second, rows = _counted(tiny_model, _sample, host, flatten(tiny_model, inv), setup, inv)
    assert torch.equal(second, reference)
    injected_steps = int(STEPS * 0.7 + 1e-6)
    assert rows == plain_rows - injected_steps * FRAMES


def test_interrupted_edits_never_leave_a_partial_entry(host, tiny_model, setup, tmp_path, inference_mode):
    """Interrupt a cache-filling edit at every UNet call k, then run again on the same MODEL and
    inversion without clearing: the steps that completed are served, the rest recomputed, and the
    result equals the uncached edit bit for bit."""
    import comfy.model_management as mm

    _fresh_memory()
    inv = _invert(tiny_model, setup, tmp_path)
    plain = dataclasses.replace(inv, feature_cache=None)
    with unet_calls(tiny_model) as count:
        reference = _sample(host, _tokenflow(tiny_model, plain), setup, plain)
    total = count["n"]
    model = _tokenflow(tiny_model, inv)
    for k in range(1, total + 1):
        _fresh_memory()
        with unet_calls(tiny_model, interrupt_at=k), pytest.raises(mm.InterruptProcessingException):
            _sample(host, model, setup, inv)
        assert torch.equal(_sample(host, model, setup, inv), reference), f"after an interrupt at call {k}/{total}"
    assert total >= 2 * STEPS
    print(f"\nfeature cache: interrupted and re-run at each of {total} UNet calls")
