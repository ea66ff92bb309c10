"""Long clips under ComfyUI core's context windows: the core node ``Context Windows (Manual)``
on the MODEL, then the pack's patches, sampled with ComfyUI's own samplers. Each window's
frames reach the patches as absolute indices (``context_window.index_list``), so per-frame
tables (inversion rows, trajectories, keyframes) are the right ones; where every window
holds the keyframes, extended attention equals the run without windows."""

import pytest
import torch

from ve_testkit.models import encode_prompt

FRAMES = 12


def _windows(model, length=6, overlap=2, schedule="standard_static"):
    import comfy_extras.nodes_context_windows as ncw

    (m,) = ncw.ContextWindowsManualNode.execute(model, length, overlap, schedule, 1, False, "pyramid", 0).args
    return m


class WindowProbe:
    """A ``DIFFUSION_MODEL`` wrapper (outermost) that records the frame indices each UNet call
    was given by core's handler."""

    def __init__(self):
        self.windows = []

    def __call__(self, executor, x, *args, **kwargs):
        to = args[4] if len(args) > 4 else kwargs.get("transformer_options", {})
        window = to.get("context_window")
        self.windows.append(tuple(window.index_list) if window is not None else None)
        return executor(x, *args, **kwargs)


def _probe(model):
    import comfy.patcher_extension as pe

    probe = WindowProbe()
    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_window_probe", probe)
    return m, probe


def _sample(model, pos, neg, latent, sigmas, cfg=4.0):
    import comfy.sample
    import comfy.samplers

    return comfy.sample.sample_custom(
        model,
        torch.zeros_like(latent),
        cfg,
        comfy.samplers.sampler_object("euler"),
        sigmas,
        pos,
        neg,
        latent,
        disable_pbar=True,
        seed=0,
    )


@pytest.fixture(scope="module")
def clip_setup(host, tiny_model, tiny_clip):
    from comfyui_videoedit.nodes.inversion import DDIMInversion

    with torch.inference_mode():
        latent = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5
        pos, neg, src = (encode_prompt(tiny_clip, t) for t in ("a red car", "", "a car"))
        record, noisy, sigmas = DDIMInversion.execute(
            tiny_model, {"samples": latent}, src, 3, 0, "ddim_uniform", 16, "off", 0, False
        ).args
    return dict(latent=latent, pos=pos, neg=neg, src=src, record=record, x_t=noisy["samples"], sigmas=sigmas)


def test_extended_attention_with_the_keyframes_in_every_window_equals_no_windows(
    host, pack_nodes, tiny_model, clip_setup, inference_mode
):
    from comfyui_videoedit.nodes.tokenflow import ApplyExtendedAttention

    s = clip_setup
    (patched,) = ApplyExtendedAttention.execute(tiny_model, keyframe_stride=1, keyframes="4, 6").args
    whole = _sample(patched, s["pos"], s["neg"], s["latent"], s["sigmas"])
    # windows [0-7], [4-11]: keyframes 4 and 6 are in both (core node first, then the patch)
    model, probe = _probe(
        ApplyExtendedAttention.execute(_windows(tiny_model, 8, 4), keyframe_stride=1, keyframes="4, 6").args[0]
    )
    windowed = _sample(model, s["pos"], s["neg"], s["latent"], s["sigmas"])
    assert set(probe.windows) == {tuple(range(0, 8)), tuple(range(4, 12))}
    assert (windowed - whole).abs().max() <= 1e-5 * whole.abs().max(), (windowed - whole).abs().max()
    # the other order (patch first, then the core node) works the same
    after = _windows(patched, 8, 4)
    assert (_sample(after, s["pos"], s["neg"], s["latent"], s["sigmas"]) - windowed).abs().max() <= 1e-6
    # windows that miss a keyframe give another result (each window attends to what it holds)
    (stride,) = ApplyExtendedAttention.execute(_windows(tiny_model, 6, 2), keyframe_stride=1, keyframes="0, 11").args
    assert (_sample(stride, s["pos"], s["neg"], s["latent"], s["sigmas"]) - whole).abs().max() > 1e-4


def test_tokenflow_on_12_frames_in_windows_of_6(host, pack_nodes, tiny_model, clip_setup, inference_mode):
    """Keyframes are drawn over the whole clip and held across windows: every keyframe a
    window attends among is one of the clip's, so overlapping windows agree on them."""
    from comfyui_videoedit.attention.keys import TOKENFLOW_PHASE_KEY
    from comfyui_videoedit.attention.tokenflow import sample_keyframes
    from comfyui_videoedit.attention.wrapper_args import diffusion_model_args
    from comfyui_videoedit.nodes.tokenflow import ApplyTokenFlow

    s = clip_setup
    args = dict(
        window=4,
        pnp_attn_t=0.5,
        pnp_f_t=0.8,
        seed=1,
        nn_feature="input",
        blend="official",
        pnp_attn_blocks="output 1/32#1-2, 1/16, 1/8",
        pnp_resnet_blocks="output 1/32#1",
    )
    model = ApplyTokenFlow.execute(_windows(tiny_model), s["record"], **args).args[0]
    used = []

    class KeyframeProbe:  # innermost: sees the state TokenFlow set up for the call (in its phase)
        def __call__(self, executor, *a, **k):
            out = executor(*a, **k)
            st = diffusion_model_args(a, k).transformer_options[TOKENFLOW_PHASE_KEY].state
            used.append((st.sigma, torch.as_tensor(st.frames)[st.kf_pos].tolist()))
            return out

    m, probe = _probe(model)
    m.add_wrapper_with_key(host.comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "zz_kf_probe", KeyframeProbe())
    out = _sample(m, s["pos"], s["neg"], s["x_t"], s["sigmas"])
    assert out.shape == s["x_t"].shape and torch.isfinite(out).all()
    assert {w for w in probe.windows} == {(0, 1, 2, 3, 4, 5), (4, 5, 6, 7, 8, 9), (6, 7, 8, 9, 10, 11)}
    steps = s["record"].num_steps
    for sigma, keyframes in used:
        step = int((s["record"].sigmas - sigma).abs().argmin())
        clip_kf = sample_keyframes(FRAMES, 4, torch.Generator().manual_seed(1 * 100003 + step)).tolist()
        assert step < steps and keyframes and set(keyframes) <= set(clip_kf), (step, keyframes, clip_kf)
    assert torch.equal(out, _sample(m, s["pos"], s["neg"], s["x_t"], s["sigmas"]))  # deterministic


def test_flatten_on_12_frames_in_windows_of_6(host, pack_nodes, tiny_model, clip_setup, inference_mode):
    """Each window's frames read their own trajectory rows and inversion rows (PnP); a window
    covering the clip is the run without windows."""
    from comfyui_videoedit.nodes.flatten import ApplyFLATTEN, SampleTrajectories

    s = clip_setup
    flow = torch.zeros(FRAMES - 1, 64, 64, 2)
    flow[..., 0] = 8.0
    (ts,) = SampleTrajectories.execute(flow, {"samples": s["latent"]}, 0).args
    inputs = dict(
        mode="dense",
        levels="highest",
        old_qk=False,
        anchor_stride=4,
        max_anchors=4,
        inject_step=0.8,
        pnp_attn_blocks="output 1/32#1-2, 1/16, 1/8#0",
        pnp_resnet_blocks="output 1/32#0-1, 1/16#0",
    )
    model, probe = _probe(ApplyFLATTEN.execute(_windows(tiny_model), ts, **inputs, inversion=s["record"]).args[0])
    out = _sample(model, s["pos"], s["neg"], s["x_t"], s["sigmas"])
    assert out.shape == s["x_t"].shape and torch.isfinite(out).all()
    assert (4, 5, 6, 7, 8, 9) in probe.windows
    whole = _sample(
        ApplyFLATTEN.execute(tiny_model, ts, **inputs, inversion=s["record"]).args[0],
        s["pos"],
        s["neg"],
        s["x_t"],
        s["sigmas"],
    )
    assert (out - whole).abs().max() > 1e-5  # attention spans a window, not the clip
    one = ApplyFLATTEN.execute(_windows(tiny_model, FRAMES, 0), ts, **inputs, inversion=s["record"]).args[0]
    assert torch.equal(_sample(one, s["pos"], s["neg"], s["x_t"], s["sigmas"]), whole)


def test_inversion_under_windows_equals_the_inversion_without(host, pack_nodes, tiny_model, clip_setup, inference_mode):
    """DDIM Inversion of a windowed model: each window of a frame chunk maps to the clip's
    frames; the plain UNet treats frames independently, so every cached row is the one the
    inversion without windows records (the windows' overlaps average equal values)."""
    from comfyui_videoedit.nodes.inversion import DDIMInversion

    s = clip_setup
    model, probe = _probe(_windows(tiny_model))
    record, noisy, _ = DDIMInversion.execute(
        model, {"samples": s["latent"]}, s["src"], 3, 0, "ddim_uniform", 16, "off", 0, False
    ).args
    assert (6, 7, 8, 9, 10, 11) in probe.windows
    assert record.num_frames == FRAMES
    reference = s["record"]
    assert (noisy["samples"] - s["x_t"]).abs().max() <= 1e-5 * s["x_t"].abs().max()
    rows = (record.latents_vp.float() - reference.latents_vp.float()).abs().max()
    assert rows <= 1e-3 * reference.latents_vp.float().abs().max(), rows  # fp16 rows


def test_peak_memory_at_24_frames_is_bounded_by_the_window(host):
    """Peak resident memory of a FLATTEN edit (dense spatio-temporal attention, PnP from the
    inversion) on 24 frames: with windows of 6 the run needs a fraction of what the whole clip
    needs (measured in a fresh process; the numbers are printed for the report)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "ve_testkit" / "peak_rss.py"
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak-RSS mark")
    run = subprocess.run(
        [sys.executable, str(script), "--method", "flatten", "--frames", "24", "--size", "8"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(result)
    assert result["windowed_finite"] and result["whole_finite"]
    assert result["windowed_peak_mb"] < 0.5 * result["whole_peak_mb"], result


def test_video_p2p_refuses_a_model_with_context_windows(host, pack_nodes, tiny_model, tiny_clip, clip_setup):
    """P2P's per-frame blend is built for the whole clip: under core's windows it is refused with
    an error naming the model input, not skipped silently."""
    from comfyui_videoedit.adapters.p2p import apply_p2p
    from comfyui_videoedit.attention.p2p_patch import P2PConfig
    from comfyui_videoedit.nodes.p2p import P2PEditNode

    edit = P2PEditNode.execute(
        tiny_clip, source_prompt="a red car", target_prompt="a blue car", blend_source="car", blend_target="car"
    ).args[0]
    with pytest.raises(ValueError, match="^model: Video-P2P does not run under context windows"):
        apply_p2p(_windows(tiny_model), edit, clip_setup["record"], P2PConfig())
