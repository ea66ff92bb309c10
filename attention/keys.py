"""Every key the pack puts into ComfyUI's ``transformer_options`` (per UNet call) or uses to
register wrappers on a ModelPatcher, in one place, so a reader sees all hidden channels between
the wrappers and the attention patches.

Per-call ``transformer_options`` keys (set on a *copy* of the options for one UNet call):
"""

FRAME_INDICES_KEY = "ve_frame_indices"
"""list[int]: global frame indices of the rows of a UNet call the pack runs on part of a clip
(inversion chunks, null-text, feature capture). Read by ``attention.frames.call_frame_indices``."""

FRAME_TOTAL_KEY = "ve_frame_total"
"""int: set with ``FRAME_INDICES_KEY``: the frame count of the whole clip those chunks come from, so
per-call checks (FLATTEN trajectories, source replay) compare against the clip, not the chunk."""

LATENT_INPUT_KEY = "ve_latent_input"
"""str: set with ``FRAME_INDICES_KEY``: the name of the node input that holds that clip, for error
messages naming it."""

CAPTURE_KEY = "ve_capture"
"""``capture.FeatureStore``: capture patches record into it during ``capture.capture_pass``."""

PNP_KEY = "ve_pnp"
"""``pnp.PnPPass``: the current PnP pass (capture on the source rows / inject into the edit)."""

TOKENFLOW_PHASE_KEY = "ve_tokenflow"
"""``tokenflow_patch.Phase``: which TokenFlow pass a UNet call is (keyframes / propagation)."""

P2P_CALL_KEY = "ve_p2p"
"""``p2p_patch.P2PCall``: the current Video-P2P call (step, rows, which controls are on)."""

# Keys the pack *reads* that ComfyUI or other packs set: "cond_or_uncond", "sigmas",
# "sample_sigmas", "context_window" (core context windows), "ad_params" (AnimateDiff-Evolved),
# and in patches' extra_options "block", "block_index", "n_heads", "activations_shape",
# "original_shape".

# Wrapper keys (``ModelPatcher.add_wrapper_with_key``): a second patch of the same kind replaces
# ours instead of stacking on it.
TOKENFLOW_WRAPPER_KEY = "videoedit_tokenflow"
PNP_WRAPPER_KEY = "videoedit_pnp"
NULLTEXT_WRAPPER_KEY = "videoedit_nulltext"
P2P_WRAPPER_KEY = "videoedit_p2p"
CONTEXT_WINDOWS_WRAPPER_KEY = "videoedit_context_windows"
"""``PREDICT_NOISE`` wrapper (``adapters/context_windows.py``) that hands the sampler a per-call
view of core's context-window handler (``model_options["context_handler"]``)."""
