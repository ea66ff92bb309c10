"""Interrupt-safety helpers: count a model's UNet calls, raise ComfyUI's interrupt inside the
k-th one, and check that a re-run after an interrupt at every k equals the uninterrupted run."""

from contextlib import contextmanager

import pytest
import torch

K_COUNTS: dict[str, int] = {}  # method -> number of k tried (printed by the interrupt test module)


@contextmanager
def unet_calls(model, interrupt_at: int | None = None):
    """Count the UNet calls of ``model``'s diffusion model; with ``interrupt_at`` = k, raise
    ComfyUI's interrupt (the flag, then ``throw_exception_if_processing_interrupted``, as the
    executor's /interrupt does) when the k-th call reaches the middle block."""
    import comfy.model_management as mm

    count = {"n": 0}
    middle = model.model.diffusion_model.middle_block[0]  # the blocks run layer by layer

    def hook(module, args):
        count["n"] += 1
        if count["n"] == interrupt_at:
            mm.interrupt_current_processing(True)
            mm.throw_exception_if_processing_interrupted()

    handle = middle.register_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()
        mm.interrupt_current_processing(False)


def _outputs(value):
    """Every tensor of a result (tensor, LATENT dict, record, tuple) for bit comparison."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in _outputs(value[k])]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _outputs(v)]
    if hasattr(value, "null_text"):  # an InversionRecord
        return _outputs([value.x_T, value.latents_vp, value.null_text, value.sigmas])
    return []


def check_interrupt_property(name, tiny_model, run):
    """``run()`` → result. Interrupt it at every UNet call k, re-run, compare bit for bit."""
    import comfy.model_management as mm

    with unet_calls(tiny_model) as count:
        reference = _outputs(run())
    total = count["n"]
    assert total >= 2, f"{name}: the run made only {total} UNet calls"
    for k in range(1, total + 1):
        with unet_calls(tiny_model, interrupt_at=k), pytest.raises(mm.InterruptProcessingException):
            run()
        again = _outputs(run())
        assert len(again) == len(reference)
        for a, b in zip(again, reference, strict=True):
            assert torch.equal(a, b), f"{name}: the run after an interrupt at UNet call {k}/{total} differs"
    K_COUNTS[name] = total
    return total
