"""DDIM inversion nodes: invert a video (cached across runs), check the reconstruction,
Video-P2P's shared null-text optimisation and a model patch that uses its embeddings."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.samplers
from comfy_api.latest import io, ui

from ..adapters import inversion as adapter
from ..adapters import nulltext
from ..adapters.inversion import InversionOptions as Inv
from ..adapters.inversion import ReconstructionOptions
from ..adapters.nulltext import NullTextOptions
from ..inversion import metrics
from .common import VE_INVERSION, available_ram

# Per frame and step the cached latents take C*h*w*2 bytes (fp16): 32 KB at 512x512 for SD.
_CACHE_TOOLTIP = (
    "Where the inversion is cached. 'disk': <ComfyUI output>/videoedit_cache/<key>/ (safetensors + "
    "manifest; survives restarts, so a new target prompt downstream skips inversion), plus RAM. "
    "'memory': this ComfyUI process only. 'off': always recompute. The cache holds latents only "
    "(fp16, about 32 KB per frame per step at 512x512); features are recomputed per step."
)


_FEATURE_CACHE, _FEATURE_CACHE_MB = Inv.default("feature_cache"), Inv.default("feature_cache_mb")


class DDIMInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_DDIMInversion",
            display_name="DDIM Inversion (video)",
            category="VideoEdit/inversion",
            description="Deterministic DDIM inversion of every frame (cfg 1, source prompt) in ComfyUI's sigma space, "
            "through the model's own patches and the real sampling path. Outputs the cached inversion "
            "(every step's latents, for the source branch of TokenFlow / FLATTEN / P2P), the noisiest "
            "latent x_T, and the SIGMAS to sample back with (a KSampler with the same steps and "
            "scheduler lands on the same sigmas).",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="The model to invert with (may already carry patches, e.g. FLATTEN); "
                    "edit with the same model.",
                ),
                io.Latent.Input("latent", tooltip="VAE-encoded source frames [frames, 4, h, w]."),
                io.Conditioning.Input(
                    "conditioning",
                    tooltip="Source prompt (a description of the video, or empty "
                    "text). The source branch replays with it.",
                ),
                io.Int.Input(
                    "steps",
                    **Inv.spec("steps"),
                    tooltip="Editing steps: the inversion keeps the latent at each of these sigmas.",
                ),
                io.Int.Input(
                    "inversion_steps",
                    **Inv.spec("inversion_steps"),
                    tooltip="Optional finer schedule for the inversion itself (TokenFlow: 500 for 50 "
                    "editing steps); 0 = same as steps. Editing sigmas are always hit exactly.",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=comfy.samplers.SCHEDULER_NAMES,
                    default=Inv.default("scheduler"),
                    tooltip="Schedule of the editing sigmas; ddim_uniform gives DDIM's timesteps.",
                ),
                io.Int.Input(
                    "frame_batch_size", **Inv.spec("frame_batch_size"), tooltip="Frames per UNet batch (memory)."
                ),
                io.Combo.Input("cache_mode", **Inv.spec("cache_mode"), tooltip=_CACHE_TOOLTIP),
                io.Int.Input(
                    "cache_limit_mb",
                    **Inv.spec("cache_limit_mb"),
                    tooltip="Cache size limit in MB (disk, and RAM separately); least recently used entries "
                    "are evicted first, the newest is always kept. 0 = no limit.",
                ),
                io.Boolean.Input(
                    "clear_cache",
                    **Inv.spec("clear_cache"),
                    tooltip="Delete every cached inversion and edit feature (disk and RAM) before running.",
                ),
                io.Combo.Input(
                    "feature_cache",
                    **Inv.spec("feature_cache"),
                    optional=True,
                    tooltip="Keep the source features each edit on this inversion computes (TokenFlow's NN "
                    "fields, PnP q/k and ResBlock residuals, per step) so the next edit with the same "
                    "settings and another target prompt skips its source pass. off: recompute every time; "
                    "memory: this ComfyUI process's RAM; disk: under output/videoedit_cache/features as "
                    "well (survives restarts). Lossless: a cached edit equals an uncached one.",
                ),
                io.Int.Input(
                    "feature_cache_mb",
                    **Inv.spec("feature_cache_mb"),
                    optional=True,
                    tooltip="Cap of the feature cache in MB (RAM, and disk separately). Older edits' "
                    "features make room first; when one edit alone passes the cap its later steps are "
                    "recomputed. 0 = no cap.",
                ),
            ],
            outputs=[
                VE_INVERSION.Output(display_name="inversion"),
                io.Latent.Output(display_name="noisy_latent"),
                io.Sigmas.Output(display_name="sigmas"),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        latent,
        conditioning,
        steps,
        inversion_steps,
        scheduler,
        frame_batch_size,
        cache_mode,
        cache_limit_mb,
        clear_cache,
        feature_cache=_FEATURE_CACHE,
        feature_cache_mb=_FEATURE_CACHE_MB,
    ) -> io.NodeOutput:
        options = {
            "steps": steps,
            "inversion_steps": inversion_steps,
            "scheduler": scheduler,
            "frame_batch_size": frame_batch_size,
            "cache_mode": cache_mode,
            "cache_limit_mb": cache_limit_mb,
            "clear_cache": clear_cache,
            "feature_cache": feature_cache,
            "feature_cache_mb": feature_cache_mb,
        }  # named parameters: callers pass them by position too
        notes: list[str] = []
        record, cached = adapter.invert_video(
            model, latent, conditioning, **options, available_bytes=available_ram(), notes=notes
        )
        text = record.summary() + (" (from cache)" if cached else f" (computed in {record.info.get('seconds')} s)")
        if record.feature_cache is not None:
            text += f"; {record.feature_cache.describe()}"
        text = "\n".join([text, *notes])
        return io.NodeOutput(
            record, adapter.output_latent(model, record, latent), record.sigmas.clone(), ui=ui.PreviewText(text)
        )


class InversionReconstruction(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_InversionReconstruction",
            display_name="Inversion Reconstruction Check",
            category="VideoEdit/inversion",
            description="Samples back from x_T along the inversion's SIGMAS (DDIM / euler, no noise, source prompt) "
            "and reports how close it lands to the source: latent MSE and, with a VAE, PSNR of the decoded "
            "frames. A good reconstruction is required for good edits.",
            inputs=[
                io.Model.Input("model", tooltip="The model the video was inverted with."),
                VE_INVERSION.Input("inversion", tooltip="Output of DDIM Inversion (or Null-Text Optimization)."),
                io.Float.Input(
                    "cfg",
                    **ReconstructionOptions.spec("cfg"),
                    tooltip="Guidance while sampling back; 1 = the inversion's own setting.",
                ),
                io.Boolean.Input(
                    "use_null_text",
                    **ReconstructionOptions.spec("use_null_text"),
                    tooltip="Use the inversion's optimised null-text embeddings as the negative "
                    "(needs Null-Text Optimization; use its cfg).",
                ),
                io.Conditioning.Input(
                    "negative", optional=True, tooltip="Negative prompt for cfg > 1 (default: the source prompt)."
                ),
                io.Vae.Input("vae", optional=True, tooltip="Decode the reconstruction and report PSNR."),
                io.Image.Input(
                    "images", optional=True, tooltip="Source frames for the PSNR (default: the decoded source latent)."
                ),
                io.Latent.Input(
                    "source_latent",
                    optional=True,
                    tooltip="The exact source LATENT for the MSE (default: the cached fp16 copy).",
                ),
            ],
            outputs=[
                io.Latent.Output(display_name="latent"),
                io.Image.Output(display_name="images"),
                io.Float.Output(display_name="latent_mse"),
                io.Float.Output(display_name="psnr"),
            ],
        )

    @classmethod
    def execute(
        cls, model, inversion, cfg, use_null_text, negative=None, vae=None, images=None, source_latent=None
    ) -> io.NodeOutput:
        s = ReconstructionOptions.from_inputs(cfg=cfg, use_null_text=use_null_text)
        recon = adapter.sample_back(model, inversion, s.cfg, None, negative, s.use_null_text)
        source = (source_latent or {}).get("samples")
        if source is not None and tuple(source.shape) != tuple(recon.shape):
            raise ValueError(
                f"source_latent: has shape {tuple(source.shape)} but the inversion holds "
                f"{tuple(recon.shape)} (frames, channels, height, width); connect the latent that was "
                "inverted, or leave source_latent empty"
            )
        if source is None:
            source = model.get_model_object("process_latent_out")(inversion.source_latent())
        source = source.to(recon.device)
        err = metrics.mse(recon, source)
        text = f"latent MSE {err:.3g}, max |error| {float((recon - source).abs().max()):.3g}"
        peak_snr = float("nan")
        if vae is not None:
            decoded = vae.decode(recon)
            ref = vae.decode(source) if images is None else metrics.center_crop_like(images, *decoded.shape[1:3])
            peak_snr = metrics.psnr(decoded, ref[..., :3].to(decoded.device))
            text += f", PSNR {peak_snr:.2f} dB"
        else:
            decoded = metrics.error_image(recon, source).to(mm.intermediate_device())
            text += " (no VAE: the image output shows the latent error, white = largest)"
        return io.NodeOutput({"samples": recon}, decoded, err, peak_snr, ui=ui.PreviewText(text))


class NullTextOptimization(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        spec = NullTextOptions.spec
        return io.Schema(
            node_id="VideoEdit_NullTextOptimization",
            display_name="Null-Text Optimization (Video-P2P)",
            category="VideoEdit/inversion",
            description="Video-P2P's shared null-text inversion: one unconditional embedding per step, shared by all "
            "frames, optimised (Adam, lr 1e-2(1-i/100), early stop 1e-5 + i*2e-5 on the 50-step scale) so "
            "that guided DDIM sampling from x_T follows the inversion. Returns the inversion with the "
            "embeddings attached; use them with Apply Null-Text or the reconstruction check.",
            inputs=[
                io.Model.Input("model", tooltip="The model the video was inverted with."),
                VE_INVERSION.Input("inversion", tooltip="Output of DDIM Inversion."),
                io.Conditioning.Input("negative", tooltip="Initial unconditional embedding (usually empty text)."),
                io.Float.Input(
                    "cfg",
                    **spec("cfg"),
                    tooltip="Guidance scale the edit will use (Video-P2P: 7.5).",
                ),
                io.Int.Input(
                    "inner_steps",
                    **spec("inner_steps"),
                    tooltip="Adam iterations per step at most (0 = keep the negative prompt's embedding).",
                ),
                io.Int.Input(
                    "frame_batch_size",
                    **spec("frame_batch_size"),
                    tooltip="Frames per UNet call; gradients are accumulated over the chunks (memory).",
                ),
                io.Conditioning.Input(
                    "positive", optional=True, tooltip="Conditional prompt (default: the inversion's source prompt)."
                ),
            ],
            outputs=[VE_INVERSION.Output(display_name="inversion")],
        )

    @classmethod
    def execute(cls, model, inversion, negative, cfg, inner_steps, frame_batch_size, positive=None) -> io.NodeOutput:
        s = NullTextOptions.from_inputs(cfg=cfg, inner_steps=inner_steps, frame_batch_size=frame_batch_size)
        record, reports = nulltext.optimize_null_text(
            model, inversion, negative, positive, s.cfg, s.inner_steps, s.frame_batch_size
        )
        first = sum(r.first_loss for r in reports) / max(len(reports), 1)
        last = sum(r.last_loss for r in reports) / max(len(reports), 1)
        iters = sum(r.iterations for r in reports)
        text = f"null-text: {len(reports)} steps, {iters} iterations, mean step loss {first:.3g} -> {last:.3g}"
        return io.NodeOutput(record, ui=ui.PreviewText(text))


class ApplyNullText(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEdit_ApplyNullText",
            display_name="Apply Null-Text Embeddings",
            category="VideoEdit/inversion",
            description="Model patch: in every unconditional branch the cross-attention context becomes the optimised "
            "null-text embedding of the current step. Sample with the inversion's SIGMAS.",
            inputs=[
                io.Model.Input("model", tooltip="The model the video was inverted with (a clone is returned)."),
                VE_INVERSION.Input("inversion", tooltip="Output of Null-Text Optimization."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, inversion) -> io.NodeOutput:
        return io.NodeOutput(nulltext.apply_null_text(model, inversion))


NODES = [DDIMInversion, InversionReconstruction, NullTextOptimization, ApplyNullText]
