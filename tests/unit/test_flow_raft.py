"""RAFT weights in torchvision's and the original repository's layouts, loading, inference.

The original layout is produced here from torchvision's names by the renaming the original
code implies (princeton-vl/RAFT core/extractor.py, core/update.py, saved from nn.DataParallel),
and pinned by literal key names and shapes of the original checkpoints, so a loader that only
agreed with a wrong layout of its own would fail.
"""

import os
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from comfyui_videoedit.flow.raft import build_raft, raft_flow
from comfyui_videoedit.flow.raft_checkpoint import (
    RaftCache,
    expected_weight_files,
    load_raft,
    pick_raft_weights,
    read_state_dict,
)

# Facts about the original checkpoints (key -> shape), as the original model classes build them.
ORIGINAL_SMALL_KEYS = {
    "module.fnet.conv1.weight": (32, 3, 7, 7),
    "module.fnet.layer1.0.conv3.weight": (32, 8, 1, 1),
    "module.fnet.layer2.0.downsample.0.weight": (64, 32, 1, 1),
    "module.cnet.conv2.weight": (160, 96, 1, 1),
    "module.update_block.encoder.convc1.weight": (96, 196, 1, 1),
    "module.update_block.encoder.conv.weight": (80, 128, 3, 3),
    "module.update_block.gru.convz.weight": (96, 242, 3, 3),
    "module.update_block.gru.convq.bias": (96,),
    "module.update_block.flow_head.conv2.weight": (2, 128, 3, 3),
}
ORIGINAL_LARGE_KEYS = {
    "module.fnet.conv1.weight": (64, 3, 7, 7),
    "module.fnet.conv2.weight": (256, 128, 1, 1),
    "module.cnet.norm1.running_var": (64,),
    "module.cnet.layer1.0.norm2.weight": (64,),
    "module.cnet.layer2.0.norm3.weight": (96,),
    "module.cnet.layer2.0.downsample.1.weight": (96,),
    "module.cnet.layer3.0.norm3.running_mean": (128,),
    "module.update_block.encoder.convc2.weight": (192, 256, 3, 3),
    "module.update_block.encoder.convf1.weight": (128, 2, 7, 7),
    "module.update_block.gru.convz1.weight": (128, 384, 1, 5),
    "module.update_block.gru.convq2.weight": (128, 384, 5, 1),
    "module.update_block.mask.0.weight": (256, 128, 3, 3),
    "module.update_block.mask.2.weight": (576, 256, 1, 1),
}
ORIGINAL_KEY_COUNT = {"raft_small": 106, "raft_large": 179}  # large: 169 + the norm3 aliases


def to_original_layout(state_dict, arch):
    """torchvision names -> the original repository's names, with its "module." prefix."""
    out = {}
    for key, value in state_dict.items():
        k = key.replace("feature_encoder.", "fnet.").replace("context_encoder.", "cnet.")
        k = k.replace(".convnormrelu.0.", ".conv1.").replace(".convnormrelu.1.", ".norm1.")
        k = re.sub(r"\.convnormrelu(\d)\.0\.", r".conv\1.", k)
        k = re.sub(r"\.convnormrelu(\d)\.1\.", r".norm\1.", k)
        k = re.sub(r"^(fnet|cnet)\.conv\.", r"\1.conv2.", k)
        k = k.replace("update_block.motion_encoder.", "update_block.encoder.")
        k = re.sub(r"encoder\.convcorr(\d)\.0\.", r"encoder.convc\1.", k)
        k = re.sub(r"encoder\.convflow(\d)\.0\.", r"encoder.convf\1.", k)
        k = k.replace("encoder.conv.0.", "encoder.conv.")
        if arch == "raft_large":  # SepConvGRU: convz1 (1×5), convz2 (5×1), ...
            k = re.sub(r"recurrent_block\.convgru(\d)\.conv([zrq])\.", r"gru.conv\2\1.", k)
        else:  # ConvGRU: convz, convr, convq
            k = re.sub(r"recurrent_block\.convgru1\.conv([zrq])\.", r"gru.conv\1.", k)
        k = k.replace("mask_predictor.convrelu.0.", "update_block.mask.0.")
        k = k.replace("mask_predictor.conv.", "update_block.mask.2.")
        out["module." + k] = value
        # the residual blocks' shortcut norm is also registered as norm3 (same module)
        alias = re.sub(r"^(cnet\.layer\d\.\d)\.downsample\.1\.", r"\1.norm3.", k)
        if arch == "raft_large" and alias != k:
            out["module." + alias] = value
    return out


def _random_raft(arch, seed=0):
    torch.manual_seed(seed)
    model = build_raft(arch)
    with torch.no_grad():  # non-trivial norm statistics, so a misplaced norm would show
        for name, buf in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def small_sd():
    return {k: v.clone() for k, v in _random_raft("raft_small").state_dict().items()}


@pytest.mark.parametrize(("arch", "facts"), [("raft_small", ORIGINAL_SMALL_KEYS), ("raft_large", ORIGINAL_LARGE_KEYS)])
def test_original_layout_loads_every_key(arch, facts):
    reference = _random_raft(arch, seed=1).state_dict()
    original = to_original_layout(reference, arch)
    assert len(original) == ORIGINAL_KEY_COUNT[arch]
    for key, shape in facts.items():
        assert tuple(original[key].shape) == shape, key
    model = load_raft(arch, original)
    loaded = model.state_dict()
    assert loaded.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), key


def test_three_file_formats_load_the_saved_weights_and_run_on_odd_sizes(tmp_path, small_sd):
    torch.save(small_sd, tmp_path / "raft_small_C_T_V2-01064c6d.pth")
    save_file(small_sd, str(tmp_path / "mine.safetensors"))
    torch.save(to_original_layout(small_sd, "raft_small"), tmp_path / "raft-small.pth")
    g = torch.Generator().manual_seed(0)
    source, target = torch.rand(2, 67, 93, 3, generator=g), torch.rand(2, 67, 93, 3, generator=g)
    flows = []
    for name in ("raft_small_C_T_V2-01064c6d.pth", "mine.safetensors", "raft-small.pth"):
        model = load_raft("raft_small", read_state_dict(str(tmp_path / name)), source=name)
        for key, value in small_sd.items():
            assert torch.equal(model.state_dict()[key], value), (name, key)
        flows.append(raft_flow(model, source, target, num_flow_updates=3))
    assert flows[0].shape == (2, 67, 93, 2) and flows[0].dtype == torch.float32
    assert torch.isfinite(flows[0]).all()
    torch.testing.assert_close(flows[1], flows[0])
    torch.testing.assert_close(flows[2], flows[0])
    # the same as running the model by hand on frames replicate-padded (centred) to 128×128
    pad = (17, 18, 30, 31)  # left, right, top, bottom: 93 -> 128, 67 -> 128

    def by_hand(x):
        return F.pad(x.permute(0, 3, 1, 2) * 2 - 1, pad, mode="replicate")

    with torch.no_grad():
        manual = model(by_hand(source), by_hand(target), num_flow_updates=3)[-1]
    torch.testing.assert_close(flows[2], manual[:, :, 30:97, 17:110].permute(0, 2, 3, 1))


def test_unknown_original_key_is_named(small_sd):
    original = to_original_layout(small_sd, "raft_small")
    original["module.fnet.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"no torchvision equivalent: fnet\.extra\.weight"):
        load_raft("raft_small", original)


def test_missing_and_unexpected_keys_are_named(small_sd):
    broken = dict(small_sd)
    del broken["update_block.flow_head.conv2.bias"]
    broken["something.else"] = torch.zeros(1)
    with pytest.raises(
        ValueError, match=r"missing 1 key\(s\) \[update_block\.flow_head\.conv2\.bias\].*something\.else"
    ):
        load_raft("raft_small", broken, source="broken.pth")


def test_conflicting_norm_aliases_are_refused():
    original = to_original_layout(_random_raft("raft_large").state_dict(), "raft_large")
    original["module.cnet.layer2.0.norm3.weight"] = original["module.cnet.layer2.0.norm3.weight"] + 1
    with pytest.raises(ValueError, match="two different tensors map to"):
        load_raft("raft_large", original)


def test_architecture_mismatch_names_the_right_method(small_sd):
    with pytest.raises(ValueError, match="x.pth holds raft_small weights, not raft_large: choose method=raft_small"):
        load_raft("raft_large", small_sd, source="x.pth")


def test_auto_pick_prefers_known_names_per_architecture():
    names = ["sub/raft-things.pth", "raft_large_C_T_SKHT_V2-ff5fadd5.safetensors", "raft-small.pth", "other.pth"]
    assert pick_raft_weights("raft_large", names) == "raft_large_C_T_SKHT_V2-ff5fadd5.safetensors"
    assert pick_raft_weights("raft_large", names[:1] + names[2:]) == "sub/raft-things.pth"
    assert pick_raft_weights("raft_small", names) == "raft-small.pth"
    assert pick_raft_weights("raft_small", ["RAFT_small_finetuned.pt"]) == "RAFT_small_finetuned.pt"
    assert pick_raft_weights("raft_small", ["raft-things.pth", "other.pth"]) is None
    assert "raft-things.pth" in expected_weight_files("raft_large")
    assert "raft-small.safetensors" in expected_weight_files("raft_small")


def test_cache_reloads_only_when_the_file_changes(tmp_path, small_sd):
    path = str(tmp_path / "raft-small.pth")
    torch.save(to_original_layout(small_sd, "raft_small"), path)
    cache = RaftCache()
    first = cache.get("raft_small", path)
    assert cache.get("raft_small", path) is first and cache.loads == 1
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.get("raft_small", path) is not first and cache.loads == 2
