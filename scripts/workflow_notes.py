"""The text of the Note in each group of a UI workflow, and the per-workflow layout spec.

A group's Note is built from a paragraph per node type in the group (``NODE_NOTES``: what the
knobs do, the paper's / official code's setting in brackets), in the order the nodes appear. A
node type without a paragraph gets its schema description from ``/object_info``, so workflows
nobody wrote notes for still explain themselves. ``WORKFLOWS`` gives a workflow an introduction
(on top of its first Note) and may move a node to another stage.

Knobs are named as the widgets are; combo values are described, not quoted, so the notes stay
true when a combo's stored ids change.
"""

from __future__ import annotations

NODE_NOTES = {
    "CheckpointLoaderSimple": (
        "Checkpoint: pick your SD1.5-family .safetensors file from models/checkpoints (any fine-tune; the methods "
        "patch a clone of its MODEL). LoRAs go between this loader and the method nodes."
    ),
    "VideoEdit_LoadVideo": (
        "Load Video: put the clip in ComfyUI/input (or use the upload button). frame_load_cap limits the frames "
        "(memory grows with frames × size); select_every_nth thins them; custom_width 512 with height 0 keeps the "
        "aspect ratio (the papers edit at 512²); size_multiple 8 suits SD VAEs."
    ),
    "VideoEdit_SelectKeyframes": (
        "Select Keyframes: frames 0, K, 2K, … of the clip (K = keyframe_interval) and their indices, for an edit "
        "of the keyframes only that Propagate Keyframes spreads over every frame (Rerender: K = 10)."
    ),
    "CLIPTextEncode": (
        "Prompts: the source prompt describes the clip as it is (or stays empty; it is what the inversion uses), "
        "the target prompt says what it should become, the negative prompt what to avoid."
    ),
    "VAEEncode": "Encode frames: the clip's latent (VAE, 1/8 of the size).",
    "VideoEdit_EstimateFlow": (
        "Optical flow, both directions. method: DIS (OpenCV, no weights, CPU) or RAFT (needs weights in "
        "models/raft; FLATTEN's code uses RAFT-large). num_flow_updates: RAFT iterations (12). scale < 1 "
        "estimates on smaller frames, faster for long clips."
    ),
    "VideoEdit_FlowConsistency": (
        "Occlusion masks from the forward–backward check: alpha / beta are the relative and constant tolerances "
        "(Sundaram et al.: 0.01 / 0.5)."
    ),
    "VideoEdit_FlowPreview": "Flow preview: colour = direction, saturation = speed, white = still. Check it "
    "before a long edit: noisy colours mean bad flow.",
    "VideoEdit_SampleTrajectories": (
        "Trajectories (FLATTEN): the flow, rounded to latent cells at every resolution, chains each patch "
        "through the frames; every patch lies on exactly one trajectory. seed only settles ties. flow_resize: how "
        "the flow reaches each latent grid (the official code's nearest pixel, or the mean motion of a cell)."
    ),
    "VideoEdit_DDIMInversion": (
        "DDIM inversion: the clip is run backwards to noise with the source prompt at cfg 1, keeping every step's "
        "latent for the edit's source branch. steps: the editing steps (TokenFlow, FLATTEN, Video-P2P: 50); "
        "inversion_steps: a finer inversion schedule (TokenFlow's code: 500; 0 = same as steps). scheduler "
        "ddim_uniform gives DDIM's timesteps. The cache (disk or RAM) makes a second run with a new target "
        "prompt skip the inversion; frame_batch_size trades memory for speed. feature_cache (memory/disk) also "
        "keeps the source features TokenFlow and FLATTEN compute at each step, so the next target prompt skips "
        "the source pass as well (same result, about a third less time per step)."
    ),
    "VideoEdit_NullTextOptimization": (
        "Null-text optimization (Video-P2P): one unconditional embedding per step, fitted so that guided sampling "
        "retraces the inversion. cfg: the edit's guidance (7.5); inner_steps: Adam iterations per step (10)."
    ),
    "VideoEdit_ApplyNullText": "Apply Null-Text: the optimised embeddings become the negative branch of the model.",
    "VideoEdit_InversionReconstruction": (
        "Reconstruction check: samples the inversion back and reports latent MSE / PSNR; a poor reconstruction "
        "means a poor edit (more steps, or null-text)."
    ),
    "VideoEdit_ApplyTokenFlow": (
        "TokenFlow: keyframes are edited jointly (extended attention), every other frame takes the keyframes' "
        "features along nearest-neighbour fields of the source. window: one random keyframe per this many "
        "frames (official batch_size 8); pnp_attn_t / pnp_f_t: fraction of steps with the source's q/k and "
        "ResBlock features injected for structure (0.5 / 0.8); seed: keyframe draw (official 1); the block "
        "lists name the injected layers (official: decoder self-attention 4–11, ResBlock output 4)."
    ),
    "VideoEdit_TokenFlowSampler": (
        "TokenFlow Sampler: TokenFlow and sampling in one box, from the inversion's noisy latent along its sigmas "
        "with no added noise. cfg 7.5 and a DDIM-like sampler (ddim, or euler on these sigmas) are TokenFlow's. "
        "window: one random keyframe per this many frames (official batch_size 8); pnp_attn_t / pnp_f_t: "
        "fraction of steps with the source's q/k and ResBlock features injected for structure (0.5 / 0.8); "
        "seed: keyframe draw (official 1); the block lists name the injected layers (official: decoder "
        "self-attention 4–11, ResBlock output 4)."
    ),
    "VideoEdit_ApplyFLATTEN": (
        "FLATTEN: dense attention over all frames, then attention along each patch's flow trajectory. mode: "
        "dense (the paper; cost grows with frames²) or bounded by anchors (anchor_stride, max_anchors) for long "
        "clips; levels: which resolutions get trajectory attention (the paper: the highest). With an inversion "
        "connected, the source's features are injected for the first inject_step of the steps (official 40 of "
        "50 = 0.8) in the listed layers. One FLATTEN node patches the model for the inversion, a second, given "
        "the inversion, for sampling."
    ),
    "VideoEdit_ApplyExtendedAttention": (
        "Extended attention: every frame attends to the keyframes' keys/values (keyframe_stride, or a list)."
    ),
    "KSamplerSelect": "Sampler: euler on the inversion's sigmas is DDIM (η = 0), as the papers sample.",
    "SamplerCustom": (
        "Sample: from the inversion's noisy latent along its SIGMAS, add_noise off (the inversion is the noise). "
        "cfg: TokenFlow 7.5, FLATTEN 10–25 (raise it for stronger edits)."
    ),
    "KSampler": "KSampler: with an inversion, use the same steps and the ddim_uniform scheduler, denoise 1.",
    "VideoEdit_RerenderKeyframes": (
        "Rerender keyframes: frames 0, K, 2K, … (keyframe_interval, paper 10) are rendered in order, each "
        "attending to the first and the previous keyframe. steps 20, cfg 7.5 (official); x0_strength: img2img "
        "strength (1 = from pure noise, structure from a ControlNet: the official code's default; 0.75 here, without one); the stage "
        "windows are fractions of the steps: cross-frame attention 0–1, shape-aware fusion 0–0.1, pixel-aware "
        "fusion 0.5–0.8, AdaIN colour 0.8–1 (the paper). mask_strength 0.5, inner_strength 0.9, "
        "fidelity_threshold / fidelity_lambda (fidelity-oriented encoder) as the official code. "
        "style_update_freq: how often the 'previous keyframe' of cross-frame attention moves on (official 10); "
        "keyframe_layout: evenly spaced keyframes, or the official code's anchor then 1, 1+K, …; "
        "latent_flow_resize: how the flow to the anchor reaches the latent grid (official bilinear, or "
        "antialiased); cross_frame_store: precision of the stored attention inputs (half precision saves memory, "
        "the model's own is the official code's). For structure put a ControlNet Apply (canny or HED, one hint "
        "per frame) on the prompts."
    ),
    "VideoEdit_PropagateKeyframes": (
        "Propagate keyframes: every in-between frame blends its two keyframes warped along the clip's flow, "
        "weighted by distance, occlusion and warp error (a stand-in for Rerender's EbSynth step). blend keeps "
        "colour statistics; analysis_scale < 1 is faster; error_scale sets how fast a bad warp loses weight."
    ),
    "VideoEdit_FidelityEncode": "Fidelity-oriented encode (Rerender): threshold 0.25, strength λ 1 (official).",
    "VideoEdit_LatentAdaIN": (
        "Latent AdaIN: match each latent's channel mean/std to the reference's; formula: exact moments, or "
        "Rerender's official update (unbiased std, eps)."
    ),
    "VAEDecode": "Decode: latents back to frames.",
    "ControlNetLoader": (
        "ControlNet (optional, bypassed = purple): select the ControlNet nodes and press Ctrl+B to use them, and "
        "pick a canny ControlNet for SD1.5 (e.g. control_v11p_sd15_canny) from models/controlnet. Rerender's "
        "code starts from noise with the ControlNet (x0_strength 1); strength 0.7 (its configs; 1 in the code)."
    ),
    "Canny": (
        "Canny: one edge map per frame as the ControlNet hint. Thresholds are fractions of 255: 0.4 / 0.8 = the "
        "code's 100 / 200 (its configs use 50 / 100 = 0.2 / 0.4)."
    ),
    "ControlNetApplyAdvanced": (
        "Apply ControlNet: adds the hint to both prompts; Rerender Keyframes gives each keyframe its own frame's hint."
    ),
    "VideoEdit_SaveVideo": (
        "Save: fps from Load Video keeps the timing; files go to ComfyUI/output under filename_prefix; crf: "
        "lower = better quality, bigger file."
    ),
}

WORKFLOWS = {
    "videoedit_demo": {
        "intro": (
            "TokenFlow edit (structure-preserving restyle of the whole clip). Set the checkpoint, the video and the "
            "target prompt, then Queue. A flow preview is saved too."
        )
    },
    "tokenflow_sampler": {
        "intro": ("TokenFlow edit with the one-box TokenFlow Sampler (same result as Apply TokenFlow + SamplerCustom).")
    },
    "flatten_edit": {
        "intro": (
            "FLATTEN edit: flow-guided attention during inversion and sampling (restyle with strong temporal "
            "consistency)."
        )
    },
    "rerender_a_video": {
        "intro": (
            "Rerender-A-Video: keyframes rendered with cross-frame attention and fusion, then propagated to every "
            "frame along the optical flow (stylising long clips)."
        ),
        # An optional ControlNet, bypassed (purple) so the workflow runs without a ControlNet file: select
        # the three nodes and press Ctrl+B to turn it on.
        "bypassed": {
            "20": {
                "class_type": "ControlNetLoader",
                "inputs": {"control_net_name": "control_v11p_sd15_canny.pth"},
                "title": "ControlNet model (bypassed: Ctrl+B to use)",
            },
            "21": {
                "class_type": "Canny",
                "inputs": {"image": ["2", 0], "low_threshold": 0.4, "high_threshold": 0.8},
                "title": "Canny edges of every frame (bypassed)",
            },
            "22": {
                "class_type": "ControlNetApplyAdvanced",
                "inputs": {
                    "positive": ["4", 0],
                    "negative": ["5", 0],
                    "control_net": ["20", 0],
                    "image": ["21", 0],
                    "strength": 0.7,
                    "start_percent": 0.0,
                    "end_percent": 1.0,
                },
                "title": "Apply ControlNet to the prompts (bypassed)",
            },
        },
        "rewire": {"6": {"positive": ["22", 0], "negative": ["22", 1]}},
    },
    "tokenflow_rerender": {
        "intro": (
            "TokenFlow keyframes, Rerender propagation: TokenFlow edits only every K-th frame (K = keyframe_interval), "
            "Rerender's propagation fills the frames between along the optical flow. Diffusion runs on 1/K of the "
            "frames, so long clips fit in less time and memory."
        )
    },
}


def stage_notes(name: str, prompt: dict, object_info: dict, stage: dict[str, str]) -> dict[str, str]:
    """stage → Note text for one workflow (``prompt`` in API form, ``stage`` from the layout)."""
    from workflow_layout import STAGE_TITLES, STAGES

    intro = WORKFLOWS.get(name, {}).get("intro")
    out = {}
    first = next((s for s in STAGES if s in stage.values()), None)
    described: dict[str, str] = {}  # node type → the group whose Note describes it
    for st in STAGES:
        seen, paras = set(), []
        if st == first and intro:
            paras.append(intro)
        for nid in sorted(
            (n for n in prompt if stage[n] == st), key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n)
        ):
            ct = prompt[nid]["class_type"]
            if ct in seen:
                continue
            seen.add(ct)
            info = object_info.get(ct, {})
            if ct in described:
                paras.append(f"{info.get('display_name') or ct}: see the note of {described[ct]}.")
                continue
            text = NODE_NOTES.get(ct)
            if text is None:
                desc = (info.get("description") or "").strip()
                text = f"{info.get('display_name') or ct}: {desc}" if desc else None
            if text:
                paras.append(text)
                described[ct] = STAGE_TITLES[st]
        if paras:
            out[st] = "\n\n".join(paras)
    return out


def overrides(name: str) -> dict[str, str]:
    return dict(WORKFLOWS.get(name, {}).get("stages", {}))


def bypassed(name: str) -> tuple[dict, dict]:
    """(UI-only nodes, added bypassed, by id; {node id: {input: new link}}) of a workflow. The API
    twin has none of them: a bypassed node passes its inputs through, so the prompt is unchanged."""
    spec = WORKFLOWS.get(name, {})
    return dict(spec.get("bypassed", {})), {k: dict(v) for k, v in spec.get("rewire", {}).items()}
