"""/interrupt during the demo workflow's sampling, then the same prompt queued again: ComfyUI
keeps the cached outputs (the TokenFlow-patched MODEL among them), and the re-run must
succeed with exactly the result of an uninterrupted run."""

import asyncio
import shutil
import uuid

import aiohttp
import requests
import safetensors.torch
import torch

from ve_testkit.server import ServerError
from ve_testkit.workflows import API_DIR, WORKFLOWS, load_api, prepare_prompt, shrink


def _node_of(prompt: dict, class_type: str) -> str:
    (node,) = [k for k, v in prompt.items() if v["class_type"] == class_type]
    return node


async def _queue_and_interrupt(url: str, prompt: dict, node: str) -> list[str]:
    """Queue ``prompt`` on a websocket client, POST /interrupt as soon as ``node`` starts
    executing; returns the message types seen until the prompt ended."""
    client = uuid.uuid4().hex
    seen = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url.replace('http', 'ws')}/ws?clientId={client}") as ws:
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client}) as r:
                assert r.status == 200, await r.text()
                prompt_id = (await r.json())["prompt_id"]
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = msg.json()
                kind, body = data.get("type"), data.get("data") or {}
                if body.get("prompt_id") not in (None, prompt_id):
                    continue
                seen.append(kind)
                if kind == "executing" and body.get("node") == node:
                    async with session.post(f"{url}/interrupt", json={}) as r:
                        assert r.status == 200
                if kind in ("execution_interrupted", "execution_error", "execution_success"):
                    return seen
                if kind == "executing" and body.get("node") is None:
                    return seen
    return seen


def _saved_latent(server, prefix: str):
    (path,) = sorted((server.output_dir / "interrupt_test").glob(f"{prefix}*.latent"))
    return safetensors.torch.load_file(str(path))["latent_tensor"]


def test_interrupt_during_sampling_then_requeue_succeeds(server):
    shutil.copyfile(WORKFLOWS / "assets" / "sample.mp4", server.base / "input" / "sample.mp4")
    prompt = shrink(
        prepare_prompt(load_api(API_DIR / "videoedit_demo.json"), "sample.mp4", None), frames=5, steps=3, width=96
    )
    sampler = _node_of(prompt, "SamplerCustom")
    # the edit's latent saved exactly (the decoded video is not bit-stable between runs: VAE
    # decode batches by free memory and H.264 turns last-bit differences into visible ones)
    save = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": ""}}
    prompt["900"] = dict(save, inputs=dict(save["inputs"], filename_prefix="interrupt_test/reference"))
    server.run(prompt, timeout=900)

    # another noise seed (no noise is added: the result is the same) and another file name
    # re-run only the sampler and what follows it, on the cached TokenFlow MODEL
    prompt[sampler]["inputs"]["noise_seed"] = 1
    prompt["900"] = dict(save, inputs=dict(save["inputs"], filename_prefix="interrupt_test/again"))
    seen = asyncio.run(_queue_and_interrupt(server.url, prompt, sampler))
    assert "execution_interrupted" in seen, seen
    try:
        server.run(prompt, timeout=900)
    except ServerError as e:
        raise AssertionError(f"the re-queued prompt failed after /interrupt: {e}") from None
    assert requests.get(f"{server.url}/system_stats", timeout=10).status_code == 200
    reference, again = _saved_latent(server, "reference"), _saved_latent(server, "again")
    assert torch.equal(reference, again), f"the re-run after the interrupt differs by {(reference - again).abs().max()}"
