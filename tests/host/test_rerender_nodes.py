"""Propagate Keyframes, VAE Encode (fidelity-oriented) and Latent AdaIN as ComfyUI nodes."""

import pytest
import torch

RERENDER_NODES = {
    "VideoEdit_RerenderKeyframes",
    "VideoEdit_PropagateKeyframes",
    "VideoEdit_FidelityEncode",
    "VideoEdit_LatentAdaIN",
}


def test_rerender_nodes_are_registered(pack_nodes):
    ids = {n.GET_SCHEMA().node_id for n in pack_nodes.all_nodes()}
    assert RERENDER_NODES <= ids
    from comfyui_videoedit.nodes import rerender

    for node in rerender.NODES:
        schema = node.GET_SCHEMA()
        assert schema.category == "VideoEdit/rerender"
        assert all(inp.tooltip for inp in schema.inputs)


def _clip(count=5, size=48):
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(
        torch.rand(1, 3, 12, 16, generator=g), size=(size, size + 16), mode="bicubic", align_corners=False
    ).clamp(0, 1)
    return torch.stack([base[0, :, :, t : t + size].permute(1, 2, 0) for t in range(count)])  # 1 px/frame to the left


def test_propagate_node_fills_every_frame(pack_nodes, inference_mode):
    from comfyui_videoedit.flow.propagate import propagate_keyframes
    from comfyui_videoedit.nodes.flow import EstimateFlow
    from comfyui_videoedit.nodes.rerender import PropagateKeyframes

    frames = _clip()
    fwd, bwd = EstimateFlow.execute(
        images=frames, method="dis", raft_weights="auto", num_flow_updates=12, batch_size=4, scale=1.0
    ).result
    styled = 1.0 - frames
    keys = styled[[0, 4]]
    (out,) = PropagateKeyframes.execute(frames, keys, "0, 4", fwd, bwd, "moments", "ycbcr", 0.5, 0.1).result
    assert out.shape == frames.shape
    assert torch.equal(out[0], keys[0]) and torch.equal(out[4], keys[1])
    assert torch.allclose(out, propagate_keyframes(frames, keys, [0, 4], fwd, bwd))
    inner = (slice(None), slice(6, -6), slice(6, -6))
    assert (out[1:4][inner] - styled[1:4][inner]).abs().mean() < 0.03
    with pytest.raises(ValueError, match="keyframe_indices"):
        PropagateKeyframes.execute(frames, keys, "0", fwd, bwd, "moments", "ycbcr", 0.5, 0.1)
    with pytest.raises(ValueError, match="keyframe_indices"):
        PropagateKeyframes.execute(frames, keys, "0, 9", fwd, bwd, "moments", "ycbcr", 0.5, 0.1)
    with pytest.raises(ValueError, match="forward_flow"):
        PropagateKeyframes.execute(frames, keys, "0, 4", fwd[:2], bwd, "moments", "ycbcr", 0.5, 0.1)


def test_fidelity_encode_node(tiny_vae, inference_mode):
    from comfyui_videoedit.flow.fusion import fidelity_encode
    from comfyui_videoedit.nodes.rerender import FIDELITY_MODES, FidelityEncode

    code, paper = list(FIDELITY_MODES)
    image = _clip(2, 64)
    latent, mask = FidelityEncode.execute(tiny_vae, image, 0.25, 1.0, paper).result
    assert latent["samples"].shape == (2, 4, 8, 8)
    assert mask.shape == (2, 64, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}

    def encode(x):
        return tiny_vae.encode(x.movedim(1, -1)).float()

    def decode(z):
        return tiny_vae.decode(z).movedim(-1, 1).float()

    direct, _ = fidelity_encode(image.movedim(-1, 1), encode, decode, 0.25, 1.0, "paper")
    assert torch.allclose(latent["samples"], direct)
    plain = tiny_vae.encode(image)
    zero, _ = FidelityEncode.execute(tiny_vae, image, 0.25, 0.0, code).result
    assert torch.allclose(zero["samples"], plain)
    with pytest.raises(ValueError, match="multiple of the VAE"):
        FidelityEncode.execute(tiny_vae, image[:, :60], 0.25, 1.0, paper)


def test_latent_adain_node(inference_mode):
    from comfyui_videoedit.nodes.rerender import LatentAdaIN

    g = torch.Generator().manual_seed(1)
    latent = {"samples": torch.randn(3, 4, 8, 8, generator=g) * 2 + 1, "batch_index": [0, 1, 2]}
    reference = {"samples": torch.randn(1, 4, 8, 8, generator=g) * 0.5 - 1}
    (out,) = LatentAdaIN.execute(latent, reference, 1.0).result
    assert out["batch_index"] == [0, 1, 2]
    var, mean = torch.var_mean(out["samples"].flatten(2), dim=2, correction=0)
    var_r, mean_r = torch.var_mean(reference["samples"].flatten(2), dim=2, correction=0)
    assert torch.allclose(mean, mean_r.expand(3, 4), atol=1e-5) and torch.allclose(var, var_r.expand(3, 4), rtol=1e-4)
    (same,) = LatentAdaIN.execute(latent, reference, 0.0).result
    assert torch.equal(same["samples"], latent["samples"])
    with pytest.raises(ValueError, match="reference"):
        LatentAdaIN.execute(latent, {"samples": torch.randn(2, 4, 8, 8)}, 1.0)
    with pytest.raises(ValueError, match="reference"):
        LatentAdaIN.execute(latent, {"samples": torch.randn(1, 16, 8, 8)}, 1.0)
