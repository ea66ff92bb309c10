"""The inversion cache seen from the node: zero UNet calls on a repeat (RAM, disk, fresh
process), keys that change with every input that matters, corrupt files recomputed."""

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ve_testkit.models import AnalyticPrediction, CallCounter, encode_prompt

TESTS_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inv(host):
    import comfyui_videoedit.nodes.inversion as inv

    return inv


@pytest.fixture
def adapter(host):
    from comfyui_videoedit.adapters import inversion as comfy_adapter

    comfy_adapter.MEMORY_CACHE.clear()
    yield comfy_adapter
    comfy_adapter.MEMORY_CACHE.clear()


def run(inv, model, latent, cond, mode, steps=4, inversion_steps=0, clear=False, limit=0):
    out = inv.DDIMInversion.execute(
        model, {"samples": latent}, cond, steps, inversion_steps, "ddim_uniform", 2, mode, limit, clear
    )
    return out.result


def fresh_latent(seed):
    return torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_memory_cache_skips_the_unet(host, inv, adapter, tiny_model, tiny_clip, inference_mode):
    cond = encode_prompt(tiny_clip, "a red car")
    latent = fresh_latent(10)
    first = CallCounter()
    rec1, lat1, sig1 = run(inv, first.attach(tiny_model), latent, cond, "memory")
    assert first.calls == 2 * 4
    second = CallCounter()
    rec2, lat2, sig2 = run(inv, second.attach(tiny_model), latent, cond, "memory")
    assert second.calls == 0
    assert rec2 is rec1 and torch.equal(lat1["samples"], lat2["samples"]) and torch.equal(sig1, sig2)
    off = CallCounter()
    run(inv, off.attach(tiny_model), latent, cond, "off")
    assert off.calls == 2 * 4


FRESH_PROCESS = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, {tests!r})
    from ve_testkit.pack import load_pack
    load_pack()
    from ve_testkit.host import import_host
    import_host({base!r})
    from safetensors.torch import load_file, save_file
    from ve_testkit.models import CallCounter, build_tiny_clip, build_tiny_model, encode_prompt
    import comfyui_videoedit.nodes.inversion as inv
    counter = CallCounter()
    model = counter.attach(build_tiny_model())
    cond = encode_prompt(build_tiny_clip(), "a red car")
    latent = load_file({latent!r})["samples"]
    with torch.inference_mode():
        rec, noisy, sigmas = inv.DDIMInversion.execute(model, {{"samples": latent}}, cond, 4, 0, "ddim_uniform", 2,
                                                       "disk", 0, False).result
    save_file({{"latents_vp": rec.latents_vp, "x_T": rec.x_T, "noisy": noisy["samples"].contiguous(),
               "sigmas": sigmas}}, {out!r})
    print("RESULT", json.dumps({{"calls": counter.calls, "key": rec.key}}))
""")


def test_disk_cache_survives_a_fresh_process(host, inv, adapter, tiny_model, tiny_clip, inference_mode, tmp_path):
    from safetensors.torch import load_file, save_file

    cond = encode_prompt(tiny_clip, "a red car")
    latent = fresh_latent(11)
    first = CallCounter()
    rec1, lat1, sig1 = run(inv, first.attach(tiny_model), latent, cond, "disk", clear=True)
    assert first.calls == 2 * 4
    entry = adapter.cache_root() / rec1.key
    assert (entry / "manifest.json").is_file() and (entry / "tensors.safetensors").is_file()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["meta"]["weights_id"] == rec1.weights_id and len(manifest["meta"]["sigmas"]) == 5

    adapter.MEMORY_CACHE.clear()  # as after a restart: only the disk remains
    second = CallCounter()
    rec2, lat2, _ = run(inv, second.attach(tiny_model), latent, cond, "disk")
    assert second.calls == 0
    assert torch.equal(rec2.latents_vp, rec1.latents_vp) and torch.equal(rec2.x_T, rec1.x_T)
    assert torch.equal(lat2["samples"], lat1["samples"])

    # a new ComfyUI process (its node cache and our RAM cache gone) reads the same entry
    save_file({"samples": latent.contiguous()}, str(tmp_path / "latent.safetensors"))
    script = FRESH_PROCESS.format(
        tests=str(TESTS_DIR),
        base=str(host.base),
        latent=str(tmp_path / "latent.safetensors"),
        out=str(tmp_path / "out.safetensors"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result == {"calls": 0, "key": rec1.key}
    fresh = load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(fresh["latents_vp"], rec1.latents_vp) and torch.equal(fresh["x_T"], rec1.x_T)
    assert torch.equal(fresh["noisy"], lat1["samples"]) and torch.equal(fresh["sigmas"], sig1)


def test_truncated_cache_file_is_recomputed_with_a_warning(
    host, inv, adapter, tiny_model, tiny_clip, inference_mode, caplog
):
    cond = encode_prompt(tiny_clip, "a red car")
    latent = fresh_latent(12)
    rec1, _, _ = run(inv, CallCounter().attach(tiny_model), latent, cond, "disk")  # same patches as below
    path = adapter.cache_root() / rec1.key / "tensors.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    adapter.MEMORY_CACHE.clear()
    counter = CallCounter()
    with caplog.at_level(logging.WARNING):
        rec2, _, _ = run(inv, counter.attach(tiny_model), latent, cond, "disk")
    assert "stale or corrupt" in caplog.text
    assert counter.calls == 2 * 4
    assert torch.equal(rec2.latents_vp, rec1.latents_vp)
    assert path.stat().st_size == len(data)  # rewritten whole

    counter = CallCounter()
    run(inv, counter.attach(tiny_model), latent, cond, "disk", clear=True)  # clear_cache recomputes too
    assert counter.calls == 2 * 4
    adapter.MEMORY_CACHE.clear()
    counter = CallCounter()
    run(inv, counter.attach(tiny_model), latent, cond, "disk")
    assert counter.calls == 0


def test_key_changes_with_patches_latent_steps_and_prompt(host, inv, adapter, tiny_model, tiny_clip, inference_mode):
    ms = tiny_model.get_model_object("model_sampling")
    field = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(13))
    model = AnalyticPrediction(field, ms).attach(tiny_model)
    cond = encode_prompt(tiny_clip, "a red car")
    latent = fresh_latent(13)

    def key(m=model, lat=latent, c=cond, steps=4, inversion_steps=0):
        return run(inv, m, lat, c, "off", steps, inversion_steps)[0].key

    base = key()
    assert key() == base  # deterministic
    patched = model.clone()
    patched.set_model_attn1_patch(lambda n, c, v, eo: (n, c, v))
    other_field = AnalyticPrediction(field * 2, ms).attach(tiny_model)
    lat2 = latent.clone()
    lat2[1, 2, 3, 4] += 1e-3
    variants = {
        "patches": key(m=patched),
        "wrapper settings": key(m=other_field),
        "latent": key(lat=lat2),
        "steps": key(steps=5),
        "inversion_steps": key(inversion_steps=8),
        "prompt": key(c=encode_prompt(tiny_clip, "a blue car")),
    }
    for name, k in variants.items():
        assert k != base, name
    assert len(set(variants.values())) == len(variants)
