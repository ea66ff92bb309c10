"""The flow nodes through their V3 ``execute`` inside the real ComfyUI (CPU, inference mode),
RAFT weights read from a temporary folder registered as ComfyUI's ``raft`` model folder."""

import re

import pytest
import torch
import torch.nn.functional as F

H, W = 67, 93  # not multiples of 8


def _smooth_clip(frames=3, shift=2, seed=0):
    """Smooth random texture moving ``shift`` px right per frame (content enters at the left)."""
    g = torch.Generator().manual_seed(seed)
    canvas = F.interpolate(
        torch.rand(1, 3, H // 4 + 4, (W + shift * frames) // 4 + 4, generator=g),
        scale_factor=4,
        mode="bicubic",
        align_corners=False,
    ).clamp(0, 1)[0]
    width = canvas.shape[-1]
    return torch.stack([canvas[:, :H, width - W - k * shift : width - k * shift] for k in range(frames)]).permute(
        0, 2, 3, 1
    )


@pytest.fixture(scope="module")
def flow_nodes(pack_nodes):
    import comfyui_videoedit.nodes.flow as flow_nodes

    return flow_nodes


@pytest.fixture(scope="module")
def raft_folder(host, tmp_path_factory):
    from comfyui_videoedit.flow.raft import build_raft

    folder = tmp_path_factory.mktemp("raft_weights")
    torch.manual_seed(0)  # random weights, torchvision layout (the original layout: tests/unit)
    torch.save(build_raft("raft_small").state_dict(), folder / "raft_small_C_T_V2-01064c6d.pth")
    host.folder_paths.add_model_folder_path("raft", str(folder))
    yield folder
    registered = host.folder_paths.folder_names_and_paths["raft"][0]
    if str(folder) in registered:
        registered.remove(str(folder))


def _run(node, **inputs):
    return node.execute(**inputs).args


def _estimate(flow_nodes, images, method="dis", **overrides):
    inputs = dict(images=images, method=method, raft_weights="auto", num_flow_updates=2, batch_size=2, scale=1.0)
    inputs.update(overrides)
    return _run(flow_nodes.EstimateFlow, **inputs)


def test_dis_flow_masks_preview_and_warp(flow_nodes, inference_mode):
    clip = _smooth_clip()
    forward, backward = _estimate(flow_nodes, clip)
    for flow in (forward, backward):
        assert flow.shape == (2, H, W, 2) and flow.dtype == torch.float32
    assert abs(float(forward[:, 8:-8, 8:-8, 0].mean()) - 2.0) < 0.5  # moves 2 px right

    occlusion, occlusion_next = _run(
        flow_nodes.FlowConsistency, forward_flow=forward, backward_flow=backward, alpha=0.01, beta=0.5, squared=True
    )
    for mask in (occlusion, occlusion_next):
        assert mask.shape == (2, H, W) and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert occlusion_next[:, 8:-8, :2].mean() > 0.9  # content entering at the left of frame i+1

    (preview,) = _run(flow_nodes.FlowPreview, flow=forward, max_magnitude=0.0)
    assert preview.shape == (2, H, W, 3) and preview.dtype == torch.float32
    assert 0 <= preview.min() and preview.max() <= 1

    (warped,) = _run(flow_nodes.WarpImages, images=clip, flow=forward, flow_direction="forward", padding_mode="border")
    (same,) = _run(
        flow_nodes.WarpImages, images=clip[1:], flow=forward, flow_direction="forward", padding_mode="border"
    )
    assert warped.shape == (2, H, W, 3) and torch.equal(warped, same)
    assert (warped - clip[:-1])[:, 8:-8, 8:-8].abs().mean() < 0.02  # frame i+1 brought onto frame i
    (back,) = _run(flow_nodes.WarpImages, images=clip, flow=backward, flow_direction="backward", padding_mode="zeros")
    assert (back - clip[1:])[:, 8:-8, 8:-8].abs().mean() < 0.02  # frame i brought onto frame i+1


def test_raft_from_the_registered_folder(flow_nodes, raft_folder, inference_mode):
    import comfyui_videoedit.adapters.raft as raft_cache

    options = next(i for i in flow_nodes.EstimateFlow.define_schema().inputs if i.id == "raft_weights").options
    assert options[0] == "auto" and "raft_small_C_T_V2-01064c6d.pth" in options

    clip = _smooth_clip()
    loads = raft_cache.RAFT_MODELS.loads
    forward, backward = _estimate(flow_nodes, clip, method="raft_small", batch_size=1)
    assert forward.shape == backward.shape == (2, H, W, 2) and forward.dtype == torch.float32
    assert torch.isfinite(forward).all() and torch.isfinite(backward).all()
    assert raft_cache.RAFT_MODELS.loads == loads + 1

    again, _ = _estimate(
        flow_nodes, clip, method="raft_small", raft_weights="raft_small_C_T_V2-01064c6d.pth", batch_size=2
    )
    assert raft_cache.RAFT_MODELS.loads == loads + 1  # cached: same file, same mtime
    torch.testing.assert_close(again, forward, atol=1e-4, rtol=0)  # batching does not change results

    from comfyui_videoedit.flow.raft import raft_flow

    model = raft_cache.RAFT_MODELS.get("raft_small", str(raft_folder / "raft_small_C_T_V2-01064c6d.pth"))
    assert next(model.parameters()).device == torch.device("cpu")  # back on the offload device
    torch.testing.assert_close(
        forward[:1], raft_flow(model, clip[:1], clip[1:2], num_flow_updates=2), atol=1e-4, rtol=0
    )


def test_missing_raft_weights_say_where_and_what(flow_nodes, raft_folder, inference_mode):
    clip = _smooth_clip()
    with pytest.raises(ValueError) as err:
        _estimate(flow_nodes, clip, method="raft_large")
    message = str(err.value)
    for part in ("raft_large_C_T_SKHT_V2-ff5fadd5.pth", "raft-things.pth", "method=dis", str(raft_folder)):
        assert part in message, part
    with pytest.raises(ValueError, match=re.escape("'nope.pth'")):
        _estimate(flow_nodes, clip, method="raft_small", raft_weights="nope.pth")


def test_bad_inputs_are_named(flow_nodes, inference_mode):
    clip = _smooth_clip()
    with pytest.raises(ValueError, match="images: optical flow needs at least 2 frames, got 1"):
        _estimate(flow_nodes, clip[:1])
    flow = torch.zeros(2, H, W, 2)
    with pytest.raises(ValueError, match="images has 5 frames but flow has 2"):
        _run(
            flow_nodes.WarpImages,
            images=torch.rand(5, H, W, 3),
            flow=flow,
            flow_direction="forward",
            padding_mode="zeros",
        )
    with pytest.raises(ValueError, match="estimate the flow on frames of this size"):
        _run(
            flow_nodes.WarpImages,
            images=torch.rand(3, H, W + 1, 3),
            flow=flow,
            flow_direction="forward",
            padding_mode="zeros",
        )
    with pytest.raises(ValueError, match="differ in shape"):
        _run(flow_nodes.FlowConsistency, forward_flow=flow, backward_flow=flow[:1], alpha=0.01, beta=0.5, squared=True)
    with pytest.raises(ValueError, match="flow: expected OPTICAL_FLOW"):
        _run(flow_nodes.FlowPreview, flow=torch.zeros(2, H, W, 3), max_magnitude=0.0)
