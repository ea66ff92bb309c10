"""DDIM inversion of a video in ComfyUI's sigma space, its cache (RAM + safetensors on disk),
source-branch replay for the editing methods, and Video-P2P's shared null-text optimisation.

Pure torch; the ComfyUI side (the inversion driver, null-text through the model, source replay)
is ``adapters/inversion.py``, ``adapters/nulltext.py`` and ``adapters/source.py``.

For editing methods (TokenFlow, FLATTEN, P2P), the public pieces are:

- ``record.InversionRecord`` — the ``VE_INVERSION`` value: ``sigmas`` (editing schedule,
  descending, ends in 0), ``num_frames``, ``num_steps``, ``latent_shape``, ``conditioning``,
  ``weights_id``/``patches_id``, ``step_index(sigma)``, ``latent_at(sigma, frames, space="ve"|"vp")``,
  ``null_text_at(sigma)``, ``check_weights(id)``, ``check_schedule(sigmas)``, ``with_features(...)``;
- ``replay.SourceReplay`` (build it with ``adapters.source.source_replay(model, record)``) —
  ``step_index``, ``num_steps``, ``latent(sigma, frames)`` (VE), ``unet_input(sigma, frames)`` (VP),
  ``unet_conditioning(n, like, frames=None) -> (context, y)``; ``attention.keys.FRAME_INDICES_KEY`` is the
  ``transformer_options`` key listing the global frames of a UNet call during inversion/capture;
- ``attention.capture`` — ``CaptureSpec``, ``adapters.source.install_capture`` / ``install_feature_capture``,
  ``capture_pass(run, transformer_options, spec, diffusion_model)`` inside a DIFFUSION_MODEL
  wrapper, ``adapters.source.capture_source_features`` standalone.
"""
