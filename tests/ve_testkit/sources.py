"""Stand-in source branches for testing attention patches without an inversion."""

import torch


class FixedSource:
    """Source latents fixed per frame (the same at every sigma), a given context."""

    def __init__(self, latents: torch.Tensor, sigmas: torch.Tensor, context: torch.Tensor):
        self.latents = latents
        self.sigmas = sigmas
        self.context = context

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    def step_index(self, sigma: float) -> int:
        d = (self.sigmas - sigma).abs()
        i = int(d.argmin())
        if d[i] > 1e-4 * max(1.0, sigma):
            raise ValueError(f"sigma {sigma} not in {self.sigmas.tolist()}")
        return i

    def check_call(self, sample_shape, frames, transformer_options) -> None:
        if tuple(sample_shape) != tuple(self.latents.shape[1:]) or int(frames.max()) >= len(self.latents):
            raise ValueError(f"latent_image: {tuple(sample_shape)} / frames {frames.tolist()} do not match the source")

    def latent(self, sigma: float, frames: torch.Tensor) -> torch.Tensor:
        return self.latents[frames] * (1 + sigma)

    def unet_conditioning(self, n: int, like: torch.Tensor, frames=None):
        return self.context.to(like.device, like.dtype).expand(n, -1, -1), None
