"""Video-P2P glue: the CLIP's tokenizer → ``P2PEdit``, the MODEL clone carrying the P2P
controllers, and the one-box sampler.

The inversion/replay/null-text helpers it uses are imported here, at the top, and nowhere
else in the P2P code."""

from __future__ import annotations

import logging

import comfy.patcher_extension as pe
import comfy.sd1_clip
import torch

from ..attention.keys import P2P_WRAPPER_KEY as WRAPPER_KEY
from ..attention.p2p_control import P2PEdit, P2PEditSpec, one_hot
from ..attention.p2p_patch import (
    P2PBlend,
    P2PConfig,
    P2PCrossAttention,
    P2PRuntime,
    P2PRunWrapper,
    P2PSelfAttention,
    P2PWrapper,
    build_schedule,
)
from ..attention.p2p_tokens import (
    PromptTokens,
    auto_mode,
    equalizer,
    mapper_from_index,
    parse_word_values,
    parse_words,
    prompt_tokens,
    refine_mapper,
    replace_mapper,
    word_positions,
)
from ..inversion.record import InversionRecord
from ..inversion.replay import SourceReplay, source_context
from .conditioning import model_conds
from .inversion import check_sampler_name, sample_inversion, weights_id
from .model_patch import comfy_attention, existing_attn1_replace, existing_replace, self_attention_keys

log = logging.getLogger(__name__)
PIXELS_PER_LATENT = 8  # SD-family VAEs; the MASK output is upsampled to the frames' size


# -- tokens -----------------------------------------------------------------------------------
def _stream_tokenizer(tokenizer, key: str):
    """The ``SDTokenizer`` of one CLIP stream (``l``, ``g``) of a ComfyUI tokenizer."""
    for name in (f"clip_{key}", key, getattr(tokenizer, "clip", "")):
        tok = getattr(tokenizer, name, None) if name else None
        if tok is not None and hasattr(tok, "tokenizer"):
            return tok
    return None


def _words(text: str) -> list[str]:
    """The prompt's words after ComfyUI's ``(word:1.2)`` weight syntax is parsed away."""
    segments = comfy.sd1_clip.token_weights(comfy.sd1_clip.escape_important(text), 1.0)
    return [w for seg, _ in segments for w in comfy.sd1_clip.unescape_important(seg).split()]


def prompt_tokens_for_clip(clip, text: str, input_name: str) -> PromptTokens:
    """Token layout of ``text`` as ``clip`` encodes it (every stream the tokenizer has: SD1 ``l``;
    SDXL ``g`` and ``l``, which must agree). Refuses prompts ComfyUI would split into several
    77-token chunks, embeddings and other tokens that are not the words' own."""
    if not (text or "").strip():
        raise ValueError(f"{input_name}: the prompt is empty; Prompt-to-Prompt needs the words of both prompts")
    streams = clip.tokenize(text)
    words = _words(text)
    layouts = {}
    for key, batches in streams.items():
        tok = _stream_tokenizer(clip.tokenizer, key)
        if tok is None or tok.start_token is None:
            raise ValueError(
                f"{input_name}: the CLIP's '{key}' tokenizer has no start token; Prompt-to-Prompt "
                "supports CLIP text encoders (SD1.x, SD2.x, SDXL)"
            )
        if len(batches) > 1:
            raise ValueError(
                f"{input_name}: ComfyUI splits this prompt into {len(batches)} chunks of "
                f"{tok.max_length} tokens; Prompt-to-Prompt supports prompts of one chunk "
                f"(at most {tok.max_length - 2} tokens): shorten it"
            )
        end = -1 if tok.tokenizer_adds_end_token else None
        word_ids = [tok.tokenizer(w)["input_ids"][tok.tokens_start : end] for w in words]
        layout = prompt_tokens(text, words, word_ids, input_name, length=len(batches[0]))
        encoded = [int(t[0]) if not isinstance(t[0], torch.Tensor) else None for t in batches[0]]
        if encoded[1 : layout.end] != list(layout.ids):
            raise ValueError(
                f"{input_name}: the prompt's tokens are not its words' own (an embedding or special "
                "syntax?); Prompt-to-Prompt needs plain words"
            )
        layouts[key] = layout
    first = next(iter(layouts.values()))
    for key, layout in layouts.items():
        if layout.spans != first.spans or layout.length != first.length:
            raise ValueError(f"{input_name}: the CLIP streams place the words at different tokens ({key})")
    return first


def encode(clip, text: str) -> list:
    """CONDITIONING of ``text`` (what CLIP Text Encode returns)."""
    tokens = clip.tokenize(text)
    if hasattr(clip, "encode_from_tokens_scheduled"):
        return clip.encode_from_tokens_scheduled(tokens)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def build_edit(clip, spec: P2PEditSpec) -> P2PEdit:
    """The ``VE_P2P_EDIT`` of a prompt pair (validated; errors name the input)."""
    src = prompt_tokens_for_clip(clip, spec.source_prompt, "source_prompt")
    tgt = prompt_tokens_for_clip(clip, spec.target_prompt, "target_prompt")
    if src.length != tgt.length:
        raise ValueError("target_prompt: tokenized to another context length than the source prompt")
    mode = auto_mode(src, tgt) if spec.mode == "auto" else spec.mode
    length = tgt.length
    if mode == "replace":
        mapper, keep = replace_mapper(src, tgt), torch.zeros(length)
    else:
        index, alpha = refine_mapper(src, tgt)
        mapper, keep = mapper_from_index(index, alpha, length), 1 - alpha
    eq = equalizer(tgt, parse_word_values(spec.reweight, "reweight", 0.0, 20.0), "reweight")

    def weights(prompt, text, input_name, name):
        words = parse_words(text)
        return one_hot(word_positions(prompt, words, input_name, name), length) if words else None

    sub_words = parse_words(spec.subtract)
    missing = [w for w in sub_words if not src.positions(w) and not tgt.positions(w)]
    if missing:
        raise ValueError(f"subtract: {missing} are in neither prompt")
    return P2PEdit(
        source=src,
        target=tgt,
        mode=mode,
        mapper=mapper,
        keep=keep,
        equalizer=eq,
        blend_src=weights(src, spec.blend_source, "blend_source", "source prompt"),
        blend_tgt=weights(tgt, spec.blend_target, "blend_target", "target prompt"),
        subtract_src=one_hot([p for w in sub_words for p in src.positions(w)], length),
        subtract_tgt=one_hot([p for w in sub_words for p in tgt.positions(w)], length),
        source_conditioning=encode(clip, spec.source_prompt),
        target_conditioning=encode(clip, spec.target_prompt),
        empty_conditioning=encode(clip, ""),
    )


# -- the source branch ------------------------------------------------------------------------
class P2PSource(SourceReplay):
    """The inversion replayed with the edit's source prompt; in joint mode also the source
    branch's unconditional context (the inversion's null-text of the step, else the empty
    prompt) and the exact x_T."""

    def __init__(self, record: InversionRecord, context, y, uncond_context, uncond_y):
        super().__init__(record, context=context, y=y)
        self.uncond_context = uncond_context
        self.uncond_y = uncond_y

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.record.latent_shape

    def uncond_conditioning(self, step: int, n: int, like: torch.Tensor, frames=None):
        ctx = self.uncond_context
        if self.record.null_text is not None:
            ctx = self.record.null_text[step : step + 1]
        ctx = self._rows(ctx, n, frames, "null-text").to(like.device, like.dtype)
        y = None if self.uncond_y is None else self._rows(self.uncond_y, n, frames, "y").to(like.device, like.dtype)
        return ctx, y


def _check_inputs(edit, inversion) -> None:
    if not isinstance(edit, P2PEdit):
        raise ValueError(f"edit: expected a VE_P2P_EDIT from VideoEdit Video-P2P Edit, got {type(edit).__name__}")
    if not isinstance(inversion, InversionRecord):
        raise ValueError(
            f"inversion: expected a VE_INVERSION from VideoEdit DDIM Inversion, got {type(inversion).__name__}"
        )


def p2p_source(model, edit: P2PEdit, record: InversionRecord) -> P2PSource:
    record.check_weights(weights_id(model))
    c, h, w = record.latent_shape
    probe = torch.zeros(1, c, h, w)
    conds = model_conds(model, edit.source_conditioning[0], probe)
    empty = model_conds(model, edit.empty_conditioning[0], probe, "negative")
    return P2PSource(
        record,
        context=conds.get("c_crossattn", source_context(edit.source_conditioning)),
        y=conds.get("y"),
        uncond_context=empty.get("c_crossattn", source_context(edit.empty_conditioning)),
        uncond_y=empty.get("y"),
    )


def p2p_model(model, edit: P2PEdit, source, config: P2PConfig):
    """Clone of ``model`` with the P2P controllers (any source branch implementing
    ``attention.p2p_patch.SourceBranch``). Returns ``(model, runtime)``."""
    schedule = build_schedule(config, edit, source.num_steps)
    runtime = P2PRuntime(config, edit, schedule, source, model.get_model_object("model_sampling"), comfy_attention)
    m = model.clone()
    for key in self_attention_keys(model):
        m.set_model_attn1_replace(P2PSelfAttention(runtime, existing_attn1_replace(m, key)), *key)
        m.set_model_attn2_replace(P2PCrossAttention(runtime, existing_replace(m, key, "attn2")), *key)
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, P2PWrapper(runtime))
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, P2PRunWrapper(runtime))
    if edit.blends:
        m.set_model_sampler_post_cfg_function(P2PBlend(runtime, config.blend_threshold, config.blend_start))
    return m, runtime


def apply_p2p(model, edit, inversion, config: P2PConfig):
    """``VideoEdit_ApplyP2P``: the patched clone and its runtime."""
    _check_inputs(edit, inversion)
    if model.model_options.get("context_handler") is not None:
        # the per-frame local blend and the source state of a step are built for the whole clip;
        # under windows the blend would be skipped silently, so refuse instead
        raise ValueError(
            "model: Video-P2P does not run under context windows yet (the model carries a Context "
            "Windows node); connect the model without it, or edit the clip in parts of one batch each"
        )
    return p2p_model(model, edit, p2p_source(model, edit, inversion), config)


def masks_image(runtime: P2PRuntime, frames: int, latent_hw: tuple[int, int]) -> torch.Tensor:
    """The last run's per-frame blend masks as a MASK ``[F, H, W]`` at pixel size (ones when
    no blend was applied: the whole frame took the edit)."""
    import comfy.model_management

    mask = runtime.last_mask
    h, w = latent_hw
    if mask is None:
        mask = torch.ones(frames, 1, h, w)
    up = torch.nn.functional.interpolate(mask.float().cpu(), scale_factor=PIXELS_PER_LATENT, mode="nearest")
    return up[:, 0].to(comfy.model_management.intermediate_device())


def sample_p2p(
    model, edit, inversion, negative, cfg: float, sampler_name: str, config: P2PConfig, positive=None
) -> tuple[dict, torch.Tensor]:
    """Apply P2P to a clone of ``model`` and sample the inversion's x_T along its sigmas (no
    added noise). Returns ``(LATENT, MASK)``."""
    check_sampler_name(sampler_name)
    patched, runtime = apply_p2p(model, edit, inversion, config)
    positive = edit.target_conditioning if positive is None else positive
    latent = sample_inversion(patched, inversion, positive, negative, cfg, sampler_name)
    x_t = latent["samples"]
    return latent, masks_image(runtime, x_t.shape[0], tuple(x_t.shape[-2:]))


__all__ = ["apply_p2p", "build_edit", "p2p_model", "prompt_tokens_for_clip", "sample_p2p"]
