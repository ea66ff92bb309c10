"""Issue #16 options through the real nodes and the real ComfyUI classes: Rerender's official
keyframe layout and style_update_freq, the node inputs that select the official behaviour,
the ResBlock injection order on ComfyUI's own ResBlock, FLATTEN's and AdaIN's options."""

import copy

import pytest
import torch
import torch.nn.functional as F

from ve_testkit.models import encode_prompt

SIZE, STEPS = 64, 8
ONLY_CROSS_FRAME = dict(
    cross_frame_start=0.0,
    cross_frame_end=1.0,
    shape_fusion_start=0.0,
    shape_fusion_end=0.0,
    pixel_fusion_start=0.0,
    pixel_fusion_end=0.0,
    adain_start=0.0,
    adain_end=0.0,
)


@pytest.fixture(scope="module")
def conds(tiny_clip):
    return encode_prompt(tiny_clip, "an oil painting"), encode_prompt(tiny_clip, "blurry")


def _clip(frames):
    g = torch.Generator().manual_seed(0)
    base = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(SIZE, SIZE), mode="bicubic").clamp(0, 1)
    return torch.cat([torch.roll(base, shifts=(t, 2 * t), dims=(2, 3)) for t in range(frames)]).movedim(1, -1)


def _node_args(model, conds, vae, frames, **kw):
    args = dict(
        model=model,
        positive=conds[0],
        negative=conds[1],
        vae=vae,
        images=frames,
        keyframe_interval=3,
        steps=STEPS,
        cfg=5.0,
        sampler_name="euler",
        scheduler="ddim_uniform",
        seed=1,
        x0_strength=0.75,
        flow_method="dis",
        mask_strength=0.5,
        inner_strength=0.9,
        smooth_boundary=True,
        fidelity_threshold=0.25,
        fidelity_lambda=1.0,
        fidelity_mode="code",
        cross_frame_blocks="decoder",
        **ONLY_CROSS_FRAME,
    )
    args.update(kw)
    return args


class _Captured(Exception):
    pass


def test_rerender_node_inputs_select_the_settings(monkeypatch, tiny_model, tiny_vae, conds):
    from comfyui_videoedit.adapters import rerender as rerender_adapter
    from comfyui_videoedit.adapters.rerender import RerenderConfig
    from comfyui_videoedit.nodes import rerender

    seen = []

    def capture(self, model, vae, positive, negative, settings, frame_count, on_step=None):
        seen.append(settings)
        raise _Captured

    monkeypatch.setattr(rerender_adapter.RerenderRun, "__init__", capture)
    frames = _clip(4)
    with pytest.raises(_Captured):  # the schema's defaults
        rerender.RerenderKeyframes.execute(**_node_args(tiny_model, conds, tiny_vae, frames))
    s = seen[-1]
    assert (s.style_update_freq, s.keyframe_layout, s.latent_flow_resize, s.store_dtype, s.adain_formula) == (
        10,
        "even",
        "official",
        torch.float16,
        "official",
    )
    assert s.style_update_freq == RerenderConfig.style_update_freq
    with pytest.raises(_Captured):
        rerender.RerenderKeyframes.execute(
            **_node_args(
                tiny_model,
                conds,
                tiny_vae,
                frames,
                style_update_freq=3,
                keyframe_layout="official",
                latent_flow_resize="antialiased",
                cross_frame_store="model",
            )
        )
    s = seen[-1]
    assert (s.style_update_freq, s.keyframe_layout, s.latent_flow_resize, s.store_dtype) == (
        3,
        "official",
        "antialiased",
        None,
    )
    for name, bad in (("keyframe_layout", "paper"), ("latent_flow_resize", "area"), ("cross_frame_store", "fp8")):
        with pytest.raises(ValueError, match=name):
            rerender.RerenderKeyframes.execute(**_node_args(tiny_model, conds, tiny_vae, frames, **{name: bad}))
    with pytest.raises(ValueError, match="style_update_freq"):
        RerenderConfig.from_inputs(style_update_freq=0)


def test_official_layout_renders_0_1_4_7_and_moves_the_previous_style_on_as_the_official_loop(
    monkeypatch, tiny_model, tiny_vae, conds, inference_mode
):
    from comfyui_videoedit.adapters import rerender as rerender_adapter
    from comfyui_videoedit.nodes import rerender

    original = rerender_adapter.RerenderRun.render_keyframe
    calls = []

    def spy(self, index, image, flow, update_style=True):
        before = dict(self.store.previous)
        out = original(self, index, image, flow, update_style=update_style)
        same = set(before) == set(self.store.previous) and all(self.store.previous[k] is v for k, v in before.items())
        calls.append((index, update_style, same, len(self.store.pending)))
        return out

    monkeypatch.setattr(rerender_adapter.RerenderRun, "render_keyframe", spy)
    frames = _clip(10)
    # official loop: i = 0, 3, 6 → cid 1, 4, 7; i % 6 == 0 updates at cid 1 and 7, not at 4
    images, indices = rerender.RerenderKeyframes.execute(
        **_node_args(tiny_model, conds, tiny_vae, frames, keyframe_layout="official", style_update_freq=6)
    ).result
    assert indices == "0, 1, 4, 7" and images.shape == (4, SIZE, SIZE, 3)
    assert calls == [(1, True, False, 0), (4, False, True, 0), (7, True, False, 0)]


def test_injection_on_comfy_resblock_is_bit_identical_to_the_official_order(tiny_model):
    from comfyui_videoedit.attention.resnet_hooks import resblock_of, residual_branch_end, residual_hooks

    dm = tiny_model.model.diffusion_model
    key = next(
        ("output", i)
        for i in range(len(dm.output_blocks))
        if hasattr(dm.output_blocks[i][0], "skip_connection")
        and not isinstance(dm.output_blocks[i][0].skip_connection, torch.nn.Identity)
    )
    block = copy.deepcopy(resblock_of(dm, key)).to(torch.bfloat16)
    holder = torch.nn.Module()
    holder.output_blocks = torch.nn.ModuleList(
        [torch.nn.Sequential() for _ in range(key[1])] + [torch.nn.Sequential(block)]
    )
    assert residual_branch_end(block) is block.out_layers[-1]
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, block.channels, 8, 8, generator=g) * 6).bfloat16()
    emb = torch.randn(2, block.emb_layers[-1].in_features, generator=g).bfloat16()
    new_h = torch.randn(2, block.out_channels, 8, 8, generator=g).bfloat16()
    seen = []
    with torch.no_grad():
        plain = block(x, emb)
        with residual_hooks(holder, [key], lambda k, h: seen.append(h) or new_h):
            out = block(x, emb)
        skip = block.skip_connection(x)
    assert torch.equal(seen[0] + skip, plain)  # the handler saw ComfyUI's own h
    assert torch.equal(out, skip + new_h)  # and its replacement went into ComfyUI's skip + h


def test_sample_trajectories_flow_resize_input():
    from comfyui_videoedit.flow.trajectories import sample_trajectories
    from comfyui_videoedit.nodes.flatten import SampleTrajectories

    g = torch.Generator().manual_seed(4)
    flow = torch.randn(3, 64, 64, 2, generator=g) * 10
    latent = {"samples": torch.zeros(4, 4, 8, 8)}
    (default,) = SampleTrajectories.execute(flow, latent, 0).args
    (official,) = SampleTrajectories.execute(flow, latent, 0, "official").args
    (anti,) = SampleTrajectories.execute(flow, latent, 0, "antialiased").args
    want = sample_trajectories(flow, (8, 8), seed=0, flow_resize="official")
    for size, traj in want.levels.items():
        assert torch.equal(default.levels[size].traj_id, traj.traj_id)
        assert torch.equal(official.levels[size].traj_id, traj.traj_id)
    assert anti.flow_resize == "antialiased"
    assert not torch.equal(anti.levels[(8, 8)].traj_id, want.levels[(8, 8)].traj_id)
    with pytest.raises(ValueError, match="flow_resize"):
        SampleTrajectories.execute(flow, latent, 0, "bilinear")


def test_latent_adain_node_formula(inference_mode):
    from comfyui_videoedit.flow.fusion import adain
    from comfyui_videoedit.nodes.rerender import LatentAdaIN

    g = torch.Generator().manual_seed(5)
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=g)}
    reference = {"samples": torch.randn(1, 4, 8, 8, generator=g) * 2}
    (default,) = LatentAdaIN.execute(latent, reference, 1.0).result
    (official,) = LatentAdaIN.execute(latent, reference, 1.0, "official").result
    assert torch.equal(default["samples"], adain(latent["samples"], reference["samples"], "exact"))
    assert torch.equal(official["samples"], adain(latent["samples"], reference["samples"], "official"))
    with pytest.raises(ValueError, match="formula"):
        LatentAdaIN.execute(latent, reference, 1.0, "paper")
