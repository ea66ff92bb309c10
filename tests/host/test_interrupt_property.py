"""Interrupt safety as a property, for every method: ComfyUI's ``InterruptProcessingException``
raised inside the k-th UNet call (between the encoder and the middle block, so the patches of
the input blocks have already run) for every k of a short run, then the same node outputs (the
same patched MODEL object, the same inversion) run again must give exactly the uninterrupted
result. ComfyUI caches node outputs such as a patched MODEL across prompts, so any state an
interrupted run leaves on them would reach the next prompt."""

import pytest
import torch

from ve_testkit.interrupts import K_COUNTS, check_interrupt_property
from ve_testkit.models import encode_prompt
from ve_testkit.runs import ddim_invert, sampler_custom

FRAMES, STEPS = 3, 2


@pytest.fixture(scope="module")
def setup(host, pack_nodes, tiny_model, tiny_clip):
    with torch.inference_mode():
        latent = {"samples": torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5}
        src = encode_prompt(tiny_clip, "a car")
        inversion, x_t, sigmas = ddim_invert(tiny_model, latent, src, STEPS).args
        pos, neg = encode_prompt(tiny_clip, "a red car"), encode_prompt(tiny_clip, "")
    yield {"latent": latent, "src": src, "inversion": inversion, "x_t": x_t, "sigmas": sigmas, "pos": pos, "neg": neg}
    print("\ninterrupt property, k tried per method:", K_COUNTS)


def _sampler_custom(host, model, s, cfg=5.0):
    return sampler_custom(host, model, s["pos"], s["neg"], s["sigmas"], s["x_t"], cfg)


TOKENFLOW = dict(
    window=2,
    pnp_attn_t=0.5,
    pnp_f_t=1.0,
    seed=1,
    nn_feature="input",
    blend="official",
    pnp_attn_blocks="output 4-11",
    pnp_resnet_blocks="output 4",
)


def test_tokenflow_apply_then_sampler_custom(host, tiny_model, setup, inference_mode):
    from comfyui_videoedit.nodes.tokenflow import ApplyTokenFlow

    (model,) = ApplyTokenFlow.execute(tiny_model, setup["inversion"], **TOKENFLOW).args
    assert check_interrupt_property("tokenflow_apply", tiny_model, lambda: _sampler_custom(host, model, setup)) >= 6


def test_tokenflow_apply_with_split_cond_uncond_calls(host, tiny_model, setup, inference_mode):
    """cfg with cond and uncond in separate UNet calls (ComfyUI splits when memory is short):
    the second call of a step reuses the source results of the first."""
    import comfy.patcher_extension as pe

    from comfyui_videoedit.nodes.tokenflow import ApplyTokenFlow

    (model,) = ApplyTokenFlow.execute(tiny_model, setup["inversion"], **dict(TOKENFLOW, window=3)).args

    def split_calls(executor, model_, conds, x_in, timestep, model_options):
        return [executor(model_, [c], x_in, timestep, model_options)[0] for c in conds]

    split = model.clone()  # shares the TokenFlow runtime (and its step state) with ``model``
    split.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, "test_split", split_calls)

    def run():
        return _sampler_custom(host, split, setup)

    check_interrupt_property("tokenflow_apply_split", tiny_model, run)


def test_tokenflow_sampler_one_box(host, tiny_model, setup, inference_mode):
    from comfyui_videoedit.nodes.tokenflow import TokenFlowSampler

    def run():
        return TokenFlowSampler.execute(
            tiny_model, setup["pos"], setup["neg"], setup["inversion"], 5.0, "euler", **TOKENFLOW
        ).args[0]

    check_interrupt_property("tokenflow_sampler", tiny_model, run)


def test_extended_attention(host, tiny_model, setup, inference_mode):
    from comfyui_videoedit.nodes.tokenflow import ApplyExtendedAttention

    (model,) = ApplyExtendedAttention.execute(tiny_model, keyframe_stride=2, keyframes="").args
    check_interrupt_property("extended_attention", tiny_model, lambda: _sampler_custom(host, model, setup))


def _flatten_model(tiny_model, setup, inversion=None):
    from comfyui_videoedit.nodes.flatten import ApplyFLATTEN, SampleTrajectories

    flow = torch.zeros(FRAMES - 1, 64, 64, 2)
    flow[..., 0] = 8.0
    (ts,) = SampleTrajectories.execute(flow, setup["latent"], 0).args
    (model,) = ApplyFLATTEN.execute(
        tiny_model,
        ts,
        mode="bounded",
        levels="highest",
        old_qk=False,
        anchor_stride=2,
        max_anchors=2,
        inject_step=1.0,
        pnp_attn_blocks="output 4-9",
        pnp_resnet_blocks="output 3, 4, 6",
        inversion=inversion,
    ).args
    return model


def test_flatten_inversion_then_pnp_sampling(host, tiny_model, setup, inference_mode):
    """FLATTEN in the inversion (memory cache on: an interrupted inversion must store nothing)
    and in the PnP-injected sampling."""
    from comfyui_videoedit.adapters.inversion import MEMORY_CACHE

    plain = _flatten_model(tiny_model, setup)

    def invert():
        MEMORY_CACHE.clear()
        return ddim_invert(plain, setup["latent"], setup["src"], STEPS, cache_mode="memory").args

    check_interrupt_property("flatten_inversion", tiny_model, invert)
    inversion, x_t, sigmas = invert()
    model = _flatten_model(tiny_model, setup, inversion)
    s = dict(setup, x_t=x_t, sigmas=sigmas)
    check_interrupt_property("flatten_sampling", tiny_model, lambda: _sampler_custom(host, model, s))


def test_null_text_optimisation_and_apply(host, tiny_model, setup, inference_mode):
    from comfyui_videoedit.nodes.inversion import ApplyNullText, NullTextOptimization

    def optimise():
        return NullTextOptimization.execute(tiny_model, setup["inversion"], setup["neg"], 5.0, 1, FRAMES).args[0]

    check_interrupt_property("null_text_optimisation", tiny_model, optimise)
    (model,) = ApplyNullText.execute(tiny_model, optimise()).args
    check_interrupt_property("null_text_apply", tiny_model, lambda: _sampler_custom(host, model, setup))


def test_rerender_keyframes(host, tiny_model, tiny_vae, setup, inference_mode):
    from comfyui_videoedit.nodes.rerender import RerenderKeyframes

    g = torch.Generator().manual_seed(4)
    images = torch.rand(4, 32, 32, 3, generator=g)
    args = dict(
        model=tiny_model,
        positive=setup["pos"],
        negative=setup["neg"],
        vae=tiny_vae,
        images=images,
        keyframe_interval=3,
        steps=4,
        cfg=5.0,
        sampler_name="euler",
        scheduler="ddim_uniform",
        seed=3,
        x0_strength=0.75,
        flow_method="dis",
        mask_strength=0.5,
        inner_strength=0.9,
        smooth_boundary=True,
        fidelity_threshold=0.25,
        fidelity_lambda=1.0,
        fidelity_mode="code",
        cross_frame_blocks="decoder",
        cross_frame_start=0.0,
        cross_frame_end=1.0,
        shape_fusion_start=0.0,
        shape_fusion_end=0.5,
        pixel_fusion_start=0.5,
        pixel_fusion_end=0.8,
        adain_start=0.8,
        adain_end=1.0,
    )
    check_interrupt_property("rerender_keyframes", tiny_model, lambda: RerenderKeyframes.execute(**args).result)


@pytest.mark.parametrize("source_mode", ["replay", "joint"])
def test_video_p2p(host, tiny_model, tiny_clip, setup, source_mode, inference_mode):
    """Apply Video-P2P (word swap, local blend, self-attention replacement) + SamplerCustom, and
    the one-box P2P Sampler (latent and blend masks)."""
    from comfyui_videoedit.nodes.p2p import ApplyP2P, P2PEditNode, P2PSampler

    edit, target = P2PEditNode.execute(
        tiny_clip,
        source_prompt="a car",
        target_prompt="a bus",
        mode="auto",
        reweight="",
        blend_source="car",
        blend_target="bus",
        subtract="",
    ).args
    options = dict(
        cross_replace_steps="0.5",
        self_replace_steps=0.5,
        blend_threshold=0.3,
        blend_start=0.0,
        source_mode=source_mode,
        frame_attention="first_frame",
    )
    (model,) = ApplyP2P.execute(tiny_model, edit, setup["inversion"], **options).args
    s = dict(setup, pos=target)
    check_interrupt_property(f"p2p_{source_mode}", tiny_model, lambda: _sampler_custom(host, model, s, cfg=4.0))

    def one_box():
        return P2PSampler.execute(
            tiny_model, edit, setup["inversion"], setup["neg"], 4.0, "euler", positive=target, **options
        ).args

    check_interrupt_property(f"p2p_sampler_{source_mode}", tiny_model, one_box)
