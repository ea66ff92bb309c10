"""Every consumer of a VE_INVERSION checks the latent being sampled against it (frames, size,
channels) and raises a ValueError naming the input and the fix — never torch's "Sizes of
tensors must match", never a silent edit against the first N source frames."""

import pytest
import torch

from ve_testkit.models import encode_prompt
from ve_testkit.runs import ddim_invert, sampler_custom

FRAMES = 3


@pytest.fixture(scope="module")
def setup(host, pack_nodes, tiny_model, tiny_clip):
    with torch.inference_mode():
        latent = {"samples": torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5}
        src = encode_prompt(tiny_clip, "a car")
        inversion, x_t, sigmas = ddim_invert(tiny_model, latent, src, 2).args
        pos, neg = encode_prompt(tiny_clip, "a red car"), encode_prompt(tiny_clip, "")
    return {"latent": latent, "inversion": inversion, "x_t": x_t, "sigmas": sigmas, "pos": pos, "neg": neg}


def _sample(host, model, s, samples):
    return sampler_custom(host, model, s["pos"], s["neg"], s["sigmas"], {"samples": samples})


def _tokenflow(tiny_model, inversion):
    from comfyui_videoedit.nodes.tokenflow import ApplyTokenFlow

    return ApplyTokenFlow.execute(
        tiny_model,
        inversion,
        window=2,
        pnp_attn_t=0.5,
        pnp_f_t=0.8,
        seed=1,
        nn_feature="input",
        blend="official",
        pnp_attn_blocks="output 4-11",
        pnp_resnet_blocks="output 4",
    ).args[0]


LATENTS = {
    "fewer frames": lambda x: x[:2],
    "more frames": lambda x: torch.cat([x, x[:1]]),
    "another size": lambda x: torch.nn.functional.interpolate(x, size=(8, 16)),
    "another height": lambda x: x[:, :, :4],
}


@pytest.mark.parametrize("change", list(LATENTS))
def test_tokenflow_refuses_a_latent_that_is_not_the_inverted_one(host, tiny_model, setup, change, inference_mode):
    model = _tokenflow(tiny_model, setup["inversion"])
    with pytest.raises(ValueError, match=r"latent_image: .*inversion holds 3 frames of 4x8x8"):
        _sample(host, model, setup, LATENTS[change](setup["x_t"]["samples"]))


def test_tokenflow_names_the_channel_count(host, tiny_model, setup, inference_mode):
    from comfyui_videoedit.inversion.replay import check_sampled_latent

    with pytest.raises(ValueError, match=r"latent_image: .*frames of 8x8x8 .* 4x8x8"):
        check_sampled_latent(3, (4, 8, 8), (8, 8, 8), torch.arange(3), None)
    check_sampled_latent(3, (4, 8, 8), (4, 8, 8), torch.tensor([1, 2]), 3)  # a window of the right latent
    with pytest.raises(ValueError, match="has 5 frames"):
        check_sampled_latent(3, (4, 8, 8), (4, 8, 8), torch.tensor([1, 2]), 5)


@pytest.mark.parametrize("change", ["fewer frames", "another size"])
def test_flatten_pnp_refuses_an_inversion_of_another_latent(host, tiny_model, setup, change, inference_mode):
    from comfyui_videoedit.nodes.flatten import ApplyFLATTEN, SampleTrajectories

    samples = LATENTS[change](setup["x_t"]["samples"])
    f, _, h, w = samples.shape
    flow = torch.zeros(f - 1, h * 8, w * 8, 2)
    (ts,) = SampleTrajectories.execute(flow, {"samples": samples}, 0).args
    (model,) = ApplyFLATTEN.execute(
        tiny_model,
        ts,
        mode="dense",
        levels="highest",
        old_qk=False,
        anchor_stride=4,
        max_anchors=4,
        inject_step=0.8,
        pnp_attn_blocks="output 4-9",
        pnp_resnet_blocks="output 3, 4, 6",
        inversion=setup["inversion"],
    ).args
    with pytest.raises(ValueError, match=r"latent_image: .*inversion holds 3 frames"):
        _sample(host, model, setup, samples)


def test_reconstruction_refuses_a_source_latent_of_another_shape(host, tiny_model, setup, inference_mode):
    from comfyui_videoedit.nodes.inversion import InversionReconstruction

    with pytest.raises(ValueError, match="source_latent: has shape"):
        InversionReconstruction.execute(
            tiny_model, setup["inversion"], 1.0, False, source_latent={"samples": setup["latent"]["samples"][:2]}
        )
