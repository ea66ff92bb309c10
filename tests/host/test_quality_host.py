"""VideoEdit_EditQuality in the real ComfyUI: CLIP scores from ComfyUI's own CLIP vision / text
classes (tiny random weights), shared-space detection, input errors, outputs and UI."""

import math

import pytest
import torch


@pytest.fixture(scope="module")
def node(pack_nodes):
    from comfyui_videoedit.nodes.quality import EditQuality

    return EditQuality


@pytest.fixture(scope="module")
def tiny_vision(host):
    from ve_testkit.models import build_tiny_clip_vision

    return build_tiny_clip_vision()


def _clip(count=5, height=48, width=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    tex = torch.nn.functional.interpolate(
        torch.rand(1, 3, 10, 12, generator=g), size=(height + 10, width + 10), mode="bicubic"
    ).clamp(0, 1)[0]
    frames = [tex[:, 8 - k : 8 - k + height, 8 - 2 * k : 8 - 2 * k + width] for k in range(count)]
    return torch.stack(frames).permute(0, 2, 3, 1).contiguous()


def _run(node, source, edited, **kw):
    args = dict(prompt="", label="", flow_scale=0.5)
    args.update(kw)
    return node.execute(source=source, edited=edited, **args)


def _cos(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_frame_consistency_equals_a_naive_loop_over_clip_vision_embeddings(node, tiny_vision, inference_mode):
    source = _clip()
    edited = (1.0 - source).clamp(0, 1) * 0.8 + 0.1 * torch.rand(
        source.shape, generator=torch.Generator().manual_seed(1)
    )
    out = _run(node, source, edited, clip_vision=tiny_vision)
    embeds = [tiny_vision.encode_image(edited[i : i + 1])["image_embeds"][0] for i in range(edited.shape[0])]
    naive = sum(_cos(embeds[i], embeds[i + 1]) for i in range(len(embeds) - 1)) / (len(embeds) - 1)
    assert out[6] == pytest.approx(naive, abs=1e-5)
    assert not math.isclose(naive, 1.0, abs_tol=1e-3)  # random weights still tell frames apart
    report = out[0]
    assert "CLIP frame consistency" in report
    assert "CLIP text alignment: skipped — no clip connected" in report
    assert math.isnan(out[7])


def test_text_alignment_is_given_only_when_the_text_tower_shares_the_image_space(
    node, tiny_vision, tiny_clip, inference_mode
):
    from comfyui_videoedit.adapters.quality import shared_text_tower, text_embedding
    from ve_testkit.models import build_tiny_clip_vision, build_tiny_projected_clip

    source = _clip()
    prompt = "a watercolor painting"
    # SD1.5-style checkpoint CLIP: ComfyUI uses its unprojected pooled output -> no shared space
    out = _run(node, source, source, clip_vision=tiny_vision, clip=tiny_clip, prompt=prompt)
    assert math.isnan(out[7])
    assert "CLIP text alignment: skipped — clip_l is used without its text projection" in out[0]

    projected = build_tiny_projected_clip()
    assert shared_text_tower(tiny_vision, projected) == ("clip_l", "")
    out = _run(node, source, source, clip_vision=tiny_vision, clip=projected, prompt=prompt)
    text = text_embedding(projected, "clip_l", prompt)
    embeds = [tiny_vision.encode_image(source[i : i + 1])["image_embeds"][0] for i in range(source.shape[0])]
    naive = sum(_cos(e, text) for e in embeds) / len(embeds)
    assert out[7] == pytest.approx(naive, abs=1e-5)
    assert "CLIP text alignment (image–prompt cosine)" in out[0]

    narrow = build_tiny_clip_vision(projection_dim=16)
    tower, why = shared_text_tower(narrow, projected)
    assert tower is None and "32 dimensions, the vision model in 16" in why


def test_without_clip_the_report_names_what_was_skipped_and_outputs_are_complete(node, inference_mode):
    source = _clip()
    edited = source.flip(-1)  # colours swapped: structure kept, colours not
    out = _run(node, source, edited, label="swap")
    report, plot, warp, warp_src, ssim_l, ssim_e, cons, text = out.args
    assert report.startswith("Edit quality — swap: 5 frames, 56×48")
    assert "CLIP frame consistency: skipped — no clip_vision connected" in report
    assert "DIS on the source at scale 0.5" in report
    assert plot.ndim == 4 and plot.shape[0] == 1 and plot.shape[-1] == 3
    assert warp >= 0 and warp_src >= 0 and -1 <= ssim_l <= 1 and -1 <= ssim_e <= 1
    assert math.isnan(cons) and math.isnan(text)
    assert out.ui["text"] == (report,)
    assert out.ui["images"] and out.ui["images"][0]["type"] == "temp"


def test_given_flows_and_a_mask_are_used(node, pack_nodes, inference_mode):
    from comfyui_videoedit.nodes.flow import EstimateFlow

    source = _clip()
    fwd, bwd = EstimateFlow.execute(
        images=source, method="dis", raft_weights="auto", num_flow_updates=12, batch_size=4, scale=1.0
    ).args
    mask = torch.zeros(48, 56)
    mask[10:30, 10:40] = 1
    out = _run(node, source, source * 0.9, forward_flow=fwd, backward_flow=bwd, mask=mask)
    assert "flow: given" in out[0]
    assert "inside the mask" in out[0] and "outside the mask" in out[0]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s[:-1], "edited: 4 frames but source has 5"),
        (lambda s: s[:, :40], r"edited: frames are 56×40 \(w×h\) but source frames are 56×48"),
    ],
)
def test_mismatched_clips_are_refused_naming_both_inputs(node, change, message, inference_mode):
    source = _clip()
    with pytest.raises(ValueError, match=message):
        _run(node, source, change(source))


def test_a_flow_pair_must_come_whole_and_fit_the_source(node, inference_mode):
    source = _clip()
    flow = torch.zeros(4, 48, 56, 2)
    with pytest.raises(ValueError, match="backward_flow: not connected while the other flow is"):
        _run(node, source, source, forward_flow=flow)
    with pytest.raises(ValueError, match="forward_flow: 3 pairs of 56×48 but source is 5 frames"):
        _run(node, source, source, forward_flow=flow[:3], backward_flow=flow[:3])


def test_an_interrupt_stops_the_run_and_the_next_run_is_whole(node, inference_mode):
    import comfy.model_management as mm

    source = _clip()
    first = _run(node, source, source * 0.5)
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _run(node, source, source * 0.5)
    finally:
        mm.interrupt_current_processing(False)
    again = _run(node, source, source * 0.5)
    assert again[0] == first[0] and again.args[2:6] == first.args[2:6]  # the four numbers without CLIP
