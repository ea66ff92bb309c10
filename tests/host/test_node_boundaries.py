"""What the nodes say at their boundary, in the pack's own words: unknown combo values, block
list typos, unsafe or foreign RAFT files, hostile save prefixes, a truncated or lying video,
memory guards, cache recomputes shown in the node's UI, and FLATTEN's aspect check accepting
the crop VAE Encode makes."""

import json
import os
import shutil
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from ve_testkit.models import encode_prompt


# -- combos and block lists --------------------------------------------------------------------
def _tokenflow_args(**kw):
    args = dict(
        window=2,
        pnp_attn_t=0.5,
        pnp_f_t=0.8,
        seed=1,
        nn_feature="input",
        blend="official",
        pnp_attn_blocks="output 4-11",
        pnp_resnet_blocks="output 4",
    )
    args.update(kw)
    return args


@pytest.fixture(scope="module")
def inversion(host, pack_nodes, tiny_model, tiny_clip):
    from comfyui_videoedit.nodes.inversion import DDIMInversion

    with torch.inference_mode():
        latent = {"samples": torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))}
        return DDIMInversion.execute(
            tiny_model, latent, encode_prompt(tiny_clip, "a car"), 2, 0, "ddim_uniform", 16, "off", 0, False
        ).args[0]


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(nn_feature="outptu"), r"^nn_feature: 'outptu' is not one of input, output$"),
        (dict(blend="smooth"), r"^blend: 'smooth' is not one of official, paper$"),
        (dict(pnp_attn_blocks="output 4-1l"), r"^pnp_attn_blocks: 'output 4-1l' is not like 'output 4-11'"),
        (
            dict(pnp_attn_blocks="outptu 4"),
            r"^pnp_attn_blocks: 'outptu 4' is not like 'output 4-11' \(input/middle/output",
        ),
    ],
)
def test_tokenflow_options_are_checked(host, tiny_model, inversion, bad, match, inference_mode):
    from comfyui_videoedit.nodes.tokenflow import ApplyTokenFlow

    with pytest.raises(ValueError, match=match):
        ApplyTokenFlow.execute(tiny_model, inversion, **_tokenflow_args(**bad))


def test_the_short_option_ids_are_accepted(host, tiny_model, inversion, inference_mode):
    from comfyui_videoedit.nodes.tokenflow import ApplyTokenFlow

    for nn_feature in ("input", "output"):
        ApplyTokenFlow.execute(tiny_model, inversion, **_tokenflow_args(nn_feature=nn_feature))


def test_check_choice_names_the_input():
    from comfyui_videoedit.options import check_choice

    assert check_choice("x", "a", ["a", "b"]) == "a"
    with pytest.raises(ValueError, match=r"^x: 'c' is not one of a, b$"):
        check_choice("x", "c", ["a", "b"])


def test_flatten_and_rerender_combos_are_checked(host, tiny_model, tiny_vae, tiny_clip, inference_mode):
    from comfyui_videoedit.adapters.flatten import flatten_model
    from comfyui_videoedit.nodes.rerender import FidelityEncode, PropagateKeyframes, RerenderKeyframes

    with pytest.raises(ValueError, match="^mode: 'sparse' is not one of dense, bounded$"):
        flatten_model(tiny_model, _trajectories(3), mode="sparse")
    images = torch.rand(2, 32, 32, 3)
    with pytest.raises(ValueError, match="^mode: 'clever' is not one of code, paper$"):
        FidelityEncode.execute(tiny_vae, images, 0.25, 1.0, "clever")
    with pytest.raises(ValueError, match="^blend: 'avg' is not one of "):
        PropagateKeyframes.execute(images, images[:1], "0", None, None, "avg", "ycbcr", 1.0, 1.0)
    cond = encode_prompt(tiny_clip, "x")
    with pytest.raises(ValueError, match="^sampler_name: 'eulerr' is not one of "):
        RerenderKeyframes.execute(
            tiny_model,
            cond,
            cond,
            tiny_vae,
            images,
            keyframe_interval=1,
            steps=2,
            sampler_name="eulerr",
            scheduler="normal",
            flow_method="dis",
        )


# -- FLATTEN: the crop VAE Encode makes ----------------------------------------------------------
def _trajectories(frames, h=8, w=8):
    from comfyui_videoedit.nodes.flatten import SampleTrajectories

    return SampleTrajectories.execute(
        torch.zeros(frames - 1, h * 8, w * 8, 2), {"samples": torch.zeros(frames, 4, h, w)}, 0
    ).args[0]


def test_flatten_accepts_the_flow_of_frames_vae_encode_cropped(host, tiny_vae, inference_mode):
    from comfyui_videoedit.nodes.flatten import SampleTrajectories

    frames = torch.rand(3, 36, 68, 3)  # 68x36: VAE Encode crops to 64x32, latent 8x4 (aspect 2.0 vs 1.89)
    (latent,) = host.nodes.VAEEncode().encode(tiny_vae, frames)
    assert latent["samples"].shape[-2:] == (4, 8)
    flow = torch.zeros(2, 36, 68, 2)
    flow[:, 2:34, 2:66, 0] = 8.0  # the part VAE Encode keeps moves by one latent cell
    (ts,) = SampleTrajectories.execute(flow, latent, 0).args
    cropped = SampleTrajectories.execute(flow[:, 2:34, 2:66], latent, 0).args[0]
    assert torch.equal(ts.at((4, 8)).traj_id, cropped.at((4, 8)).traj_id)
    with pytest.raises(
        ValueError,
        match=r"flow: is 100x36 .* latent is 8x4 \(64x32 pixels\).*crop or resize the "
        r"frames to 64x32 before both VAE Encode and Estimate Optical Flow",
    ):
        SampleTrajectories.execute(torch.zeros(2, 36, 100, 2), latent, 0)


# -- RAFT files --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raft_files(host, tmp_path_factory):
    import collections

    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("raft_bad")
    torch.save({"w": collections.OrderedDict(a=torch.zeros(1)), "layer": torch.nn.Linear(1, 1)}, folder / "unsafe.pth")
    (folder / "foreign.safetensors").write_bytes(os.urandom(4096))
    (folder / "garbage.pth").write_bytes(os.urandom(4096))
    torch.save({"foo.weight": torch.zeros(3)}, folder / "other_model.pth")
    save_file({"foo.weight": torch.zeros(3)}, str(folder / "other_model.safetensors"))
    host.folder_paths.add_model_folder_path("raft", str(folder))
    return folder


@pytest.mark.parametrize(
    "name, match",
    [
        ("unsafe.pth", r"raft_weights: 'unsafe.pth' holds Python objects besides tensors .* never code from a pickle"),
        ("garbage.pth", r"raft_weights: 'garbage.pth' (holds Python objects|cannot be read)"),
        ("foreign.safetensors", r"raft_weights: 'foreign.safetensors' is not a readable safetensors file"),
        (
            "other_model.pth",
            r"raft_weights: 'other_model.pth' holds no RAFT weights \(1 tensors such as \[foo.weight\]",
        ),
        ("other_model.safetensors", r"raft_weights: 'other_model.safetensors' holds no RAFT weights"),
    ],
)
def test_raft_file_errors_are_the_packs_words(host, pack_nodes, raft_files, name, match, inference_mode):
    from comfyui_videoedit.nodes.flow import EstimateFlow

    with pytest.raises(ValueError, match=match) as err:
        EstimateFlow.execute(
            images=torch.rand(2, 32, 32, 3),
            method="raft_small",
            raft_weights=name,
            num_flow_updates=2,
            batch_size=2,
            scale=1.0,
        )
    assert "trust the source" not in str(err.value) and "header too large" not in str(err.value).split("(")[0]


# -- Save Video prefixes -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prefix, match",
    [
        ("../escape", r"filename_prefix: '../escape' climbs out of ComfyUI's output folder"),
        ("VideoEdit/../../escape", r"filename_prefix: .* climbs out"),
        ("/tmp/escape", r"filename_prefix: '/tmp/escape' is an absolute path"),
        ("C:\\escape", r"filename_prefix: .* is an absolute path"),
        ("name\x00.mp4", r"filename_prefix: contains a control character \(e.g. a NUL byte\)"),
    ],
)
def test_save_video_refuses_prefixes_outside_the_output_folder(
    host, pack_nodes, prefix, match, tmp_path, inference_mode
):
    from comfyui_videoedit.nodes.video import SaveVideo

    out = host.folder_paths.get_output_directory()
    before = sorted(os.listdir(os.path.dirname(out)))
    node = SaveVideo.PREPARE_CLASS_CLONE({})
    with pytest.raises(ValueError, match=match):
        node.execute(images=torch.rand(2, 16, 16, 3), fps=8.0, format="mp4", filename_prefix=prefix, crf=19)
    assert sorted(os.listdir(os.path.dirname(out))) == before


# -- Load Video: truncated and lying files, memory ----------------------------------------------
def _input(host, name):
    return os.path.join(host.folder_paths.get_input_directory(), name)


def test_load_video_errors_on_a_truncated_mp4_and_warns_on_a_lying_header(host, pack_nodes, tmp_path, inference_mode):
    from comfyui_videoedit.media.encode import write_video
    from comfyui_videoedit.nodes.video import LoadVideo

    (full,) = write_video(torch.rand(24, 32, 32, 3), str(tmp_path / "full"), 24.0, "mp4", 19)
    data = open(full, "rb").read()
    with open(_input(host, "truncated.mp4"), "wb") as f:
        f.write(data[: len(data) // 3])
    args = dict(
        frame_load_cap=0, skip_first_frames=0, select_every_nth=1, custom_width=0, custom_height=0, size_multiple=8
    )
    with pytest.raises(ValueError, match=r"video: 'truncated.mp4' is truncated or damaged: only \d+ frames of the 24"):
        LoadVideo.execute(video="truncated.mp4", **args)

    with av.open(_input(host, "gappy.mkv"), "w") as c:
        s = c.add_stream("mpeg4", rate=24)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = Fraction(1, 24)
        for i, pts in enumerate([0, 1, 2, 40]):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 50, np.uint8), format="rgb24")
            frame.pts = pts
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    out = LoadVideo.execute(video="gappy.mkv", **args)
    assert out.result[1] == 4
    assert "decoded 4 frames" in "".join(out.ui.as_dict()["text"])


def test_load_video_memory_guard_names_the_inputs(host, pack_nodes, tmp_path, monkeypatch, inference_mode):
    from comfyui_videoedit.media.encode import write_video
    from comfyui_videoedit.nodes import video

    (path,) = write_video(torch.rand(6, 32, 32, 3), str(tmp_path / "small"), 24.0, "mp4", 19)
    shutil.copyfile(path, _input(host, "small.mp4"))
    monkeypatch.setattr(video, "available_ram", lambda: 2 * 32 * 32 * 3 * 4)
    with pytest.raises(ValueError, match=r"frame_load_cap/custom_width: loading 6 frames .* at most 2"):
        video.LoadVideo.execute(
            video="small.mp4",
            frame_load_cap=0,
            skip_first_frames=0,
            select_every_nth=1,
            custom_width=0,
            custom_height=0,
            size_multiple=8,
        )


# -- the inversion cache -------------------------------------------------------------------------
def test_an_edited_cache_manifest_recomputes_and_says_so_in_the_ui(
    host, tiny_model, tiny_clip, tmp_path, inference_mode
):
    from comfyui_videoedit.adapters import inversion as comfy_adapter
    from comfyui_videoedit.inversion.cache import MANIFEST
    from comfyui_videoedit.nodes.inversion import DDIMInversion

    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(11))}
    cond = encode_prompt(tiny_clip, "a boat")

    def run():
        comfy_adapter.MEMORY_CACHE.clear()
        return DDIMInversion.execute(tiny_model, latent, cond, 2, 0, "ddim_uniform", 16, "disk", 0, False)

    first = run()
    root = comfy_adapter.cache_root()
    (folder,) = [f for f in root.iterdir() if f.name == first.result[0].key]
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["meta"]["weights_id"] = "0" * 64
    (folder / MANIFEST).write_text(json.dumps(manifest))
    again = run()
    text = "".join(again.ui.as_dict()["text"])
    assert "edited" in text and "recomputing" in text
    assert torch.equal(again.result[0].x_T, first.result[0].x_T)
    assert "(from cache)" in "".join(run().ui.as_dict()["text"])  # the rewritten entry is good again


def test_inversion_memory_guards(host, tiny_model, tiny_clip, inference_mode):
    from comfyui_videoedit.adapters import inversion as comfy_adapter
    from comfyui_videoedit.nodes.inversion import DDIMInversion

    latent = {"samples": torch.randn(8, 4, 64, 64)}
    cond = encode_prompt(tiny_clip, "a boat")
    with pytest.raises(
        ValueError,
        match=r"cache_limit_mb: the inversion of 8 frames at 2 steps takes 1 MB, more "
        r"than cache_limit_mb \(1 MB\).*at least 2",
    ):
        DDIMInversion.execute(tiny_model, latent, cond, 2, 0, "ddim_uniform", 16, "memory", 1, False)
    with pytest.raises(ValueError, match=r"latent/steps: the inversion of 8 frames at 2 steps needs"):
        comfy_adapter.invert_video(tiny_model, latent, cond, 2, cache_mode="off", available_bytes=1000)


def test_flatten_inversion_in_chunks_checks_the_whole_clip(host, tiny_model, tiny_clip, inference_mode):
    """DDIM Inversion runs the clip in chunks with the chunk's frame indices; the trajectories
    are still checked against the whole latent, and the message names the node's input."""
    from comfyui_videoedit.adapters.flatten import flatten_model
    from comfyui_videoedit.nodes.inversion import DDIMInversion

    model = flatten_model(tiny_model, _trajectories(4))
    with pytest.raises(ValueError, match=r"^latent \(FLATTEN\): the trajectories were sampled for 4 frames .* has 3"):
        DDIMInversion.execute(
            model,
            {"samples": torch.zeros(3, 4, 8, 8)},
            encode_prompt(tiny_clip, "x"),
            2,
            0,
            "ddim_uniform",
            2,
            "off",
            0,
            False,
        )


def test_rerender_flows_of_another_aspect_are_refused(host, tiny_model, tiny_vae, tiny_clip, inference_mode):
    from comfyui_videoedit.nodes.rerender import PropagateKeyframes

    images = torch.rand(3, 32, 32, 3)
    flow = torch.zeros(2, 16, 32, 2)
    with pytest.raises(ValueError, match=r"forward_flow: is 32x16 .* frames are 32x32: their aspect ratios differ"):
        PropagateKeyframes.execute(images, images, "0, 1, 2", flow, flow, "moments", "ycbcr", 1.0, 1.0)
    half = torch.zeros(2, 16, 16, 2)  # a lower-resolution flow of the same frames is fine
    PropagateKeyframes.execute(images, images, "0, 1, 2", half, half, "moments", "ycbcr", 1.0, 1.0)
