"""The harness itself: tiny models sample through ComfyUI's real samplers, the analytic model
gives its closed-form prediction, the call counter counts."""

import torch

from ve_testkit.models import AnalyticPrediction, CallCounter, encode_prompt


def test_tiny_models_sample_and_decode(host, tiny_model, tiny_clip, tiny_vae, inference_mode):
    pos = encode_prompt(tiny_clip, "a cat")
    neg = encode_prompt(tiny_clip, "")
    assert pos[0][0].shape == (1, 77, 32)
    frames = torch.rand(3, 64, 64, 3)
    latent = {"samples": tiny_vae.encode(frames)}
    assert latent["samples"].shape == (3, 4, 8, 8)
    counter = CallCounter()
    model = counter.attach(tiny_model)
    (out,) = host.nodes.common_ksampler(model, 0, 2, 5.0, "euler", "normal", pos, neg, latent, denoise=0.6)
    assert out["samples"].shape == (3, 4, 8, 8)
    assert torch.isfinite(out["samples"]).all()
    assert out["samples"].abs().sum() > 0
    assert counter.calls >= 2
    images = tiny_vae.decode(out["samples"])
    assert images.shape == (3, 64, 64, 3)


def test_analytic_prediction_is_exact(host, tiny_model, tiny_clip, inference_mode):
    """apply_model through the wrapper returns x - sigma * eps for the closed-form eps."""
    ms = tiny_model.get_model_object("model_sampling")
    field = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for prediction in ("eps", "v"):
        from ve_testkit.models import build_tiny_model

        base = tiny_model if prediction == "eps" else build_tiny_model(prediction="v")
        analytic = AnalyticPrediction(field, ms, prediction=prediction)
        m = analytic.attach(base)
        host.comfy.model_management.load_models_gpu([m])
        x = torch.randn(2, 4, 8, 8)
        sigma = torch.full((2,), 3.0)
        ctx = encode_prompt(tiny_clip, "")[0][0].repeat(2, 1, 1)
        # outside sampling, wrappers live on the patcher; sampling merges them the same way
        to = dict(m.model_options["transformer_options"], wrappers=m.wrappers)
        den = m.model.apply_model(x, sigma, c_crossattn=ctx, transformer_options=to)
        x_in = x / torch.sqrt(sigma.view(-1, 1, 1, 1) ** 2 + 1)
        t = ms.timestep(sigma)
        expected_eps = analytic.eps(x_in, ms.sigma(t))
        eps = (x - den) / 3.0
        assert torch.allclose(eps, expected_eps, atol=2e-3), (prediction, (eps - expected_eps).abs().max())
        assert analytic.calls == 1
