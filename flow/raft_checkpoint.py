"""RAFT weight files: reading, the original (princeton-vl) key layout, loading, caching.

Two layouts are accepted:

- torchvision's (``raft_large_C_T_SKHT_V2-ff5fadd5.pth`` …): ``feature_encoder.…``,
  ``context_encoder.…``, ``update_block.motion_encoder.…``, ``mask_predictor.…``;
- the original RAFT repository's (``raft-things.pth``, ``raft-small.pth`` …), saved from an
  ``nn.DataParallel``: ``module.fnet.…``, ``module.cnet.…``, ``module.update_block.encoder.…``,
  ``module.update_block.gru.…``, ``module.update_block.mask.…``.

The original modules map one-to-one onto torchvision's (torchvision's ``C_T_V1`` weights
were ported from them); the renaming rules are below. They were checked once against the
original code itself: its randomly initialised models, converted and run through torchvision,
give the same flow to 2e-5 px. Any key that no rule covers, and any model key the file lacks,
is reported by name rather than silently skipped.
"""

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping

import torch

from .raft import RAFT_ARCHITECTURES, build_raft

log = logging.getLogger(__name__)

# Well-known file names per architecture, in the order "auto" prefers them (the stem matches
# with any weight extension, e.g. raft-things.safetensors).
RAFT_WEIGHT_NAMES = {
    "raft_large": (
        "raft_large_C_T_SKHT_V2-ff5fadd5",  # torchvision DEFAULT (things + sintel/kitti/hd1k)
        "raft_large_C_T_SKHT_V1-0b8c9e55",
        "raft-things",  # original repository, FlyingChairs + FlyingThings
        "raft_large_C_T_V2-1bb1363a",
        "raft_large_C_T_V1-22a6c225",
        "raft-sintel",
        "raft_large_C_T_SKHT_K_V2-b5c70766",
        "raft_large_C_T_SKHT_K_V1-4a6a5039",
        "raft-kitti",
        "raft-chairs",
    ),
    "raft_small": (
        "raft_small_C_T_V2-01064c6d",  # torchvision DEFAULT
        "raft_small_C_T_V1-ad48884c",
        "raft-small",  # original repository
    ),
}
# Name prefixes that identify the architecture of files not in the list above.
_ARCH_PREFIXES = {
    "raft_large": ("raft_large", "raft-large", "raft-things", "raft-sintel", "raft-kitti", "raft-chairs"),
    "raft_small": ("raft_small", "raft-small"),
}


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name.replace("\\", "/")))[0]


def expected_weight_files(arch: str) -> list[str]:
    """The file names ``pick_raft_weights`` looks for (``.pth`` and ``.safetensors`` forms)."""
    return [f"{stem}{ext}" for stem in RAFT_WEIGHT_NAMES[arch] for ext in (".pth", ".safetensors")]


def pick_raft_weights(arch: str, names: Iterable[str]) -> str | None:
    """The best weight file for ``arch`` among ``names`` (relative names as ComfyUI lists
    them), or None: first a well-known name in preference order, then any name starting with a
    prefix of that architecture (sorted, so the choice is stable)."""
    names = sorted(names)
    by_stem: dict[str, str] = {}
    for name in names:
        by_stem.setdefault(_stem(name).lower(), name)
    for stem in RAFT_WEIGHT_NAMES[arch]:
        if stem.lower() in by_stem:
            return by_stem[stem.lower()]
    for name in names:
        if _stem(name).lower().startswith(_ARCH_PREFIXES[arch]):
            return name
    return None


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a pickled state dict (tensors only:
    ``weights_only=True``), on the CPU. A dict nested under ``state_dict``/``model`` is
    unwrapped. Unreadable or unsafe files raise a ValueError naming ``raft_weights`` (the
    library's own error kept as ``__cause__``)."""
    import pickle

    name = f"raft_weights: '{os.path.basename(path)}'"
    fix = "choose a torchvision RAFT checkpoint (raft_large_C_T_SKHT_V2.pth …) or the original raft-things.pth"
    if path.lower().endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"{name} is not a readable safetensors file ({err}); {fix}") from err
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{name} holds Python objects besides tensors (or is not a PyTorch file), so it was not loaded: "
            f"the pack only reads plain tensors, never code from a pickle; {fix}, or re-save the weights as a "
            "state dict of tensors / .safetensors"
        ) from err
    except Exception as err:  # torch.load fails on foreign bytes with any error type (EOFError, IndexError…)
        raise ValueError(f"{name} cannot be read as a PyTorch checkpoint ({type(err).__name__}: {err}); {fix}") from err
    for key in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping):
        raise ValueError(f"{name} is not a RAFT state dict (found {type(data).__name__}); {fix}")
    return dict(data)


_RAFT_KEY_PREFIXES = ("feature_encoder.", "context_encoder.", "update_block.", "fnet.", "cnet.")


def has_raft_weights(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether any key looks like a RAFT module's (either layout, ``module.`` prefix allowed)."""
    return any(str(k).removeprefix("module.").startswith(_RAFT_KEY_PREFIXES) for k in state_dict)


# --- original layout → torchvision layout -------------------------------------------------
# Rules are tried in order on the key without its "module." prefix; the first match wins.
# Encoders: conv1/norm1 (stem) → convnormrelu.0/1; per block convK/normK → convnormreluK.0/1;
# conv2 (head) → conv. Residual blocks (raft_large) hold their shortcut norm twice, as norm3 and
# as downsample.1 (the same module); bottleneck blocks (raft_small) call it norm4 and use norm3
# for their third conv.
_ENCODER_RULES = {
    "raft_large": ((r"^(layer\d\.\d)\.norm3\.", r"\1.downsample.1."),),
    "raft_small": (
        (r"^(layer\d\.\d)\.norm3\.", r"\1.convnormrelu3.1."),
        (r"^(layer\d\.\d)\.norm4\.", r"\1.downsample.1."),
    ),
}
_ENCODER_COMMON = (
    (r"^conv1\.", "convnormrelu.0."),
    (r"^norm1\.", "convnormrelu.1."),
    (r"^conv2\.", "conv."),
    (r"^(layer\d\.\d)\.conv([123])\.", r"\1.convnormrelu\2.0."),
    (r"^(layer\d\.\d)\.norm([12])\.", r"\1.convnormrelu\2.1."),
    (r"^(layer\d\.\d)\.downsample\.([01])\.", r"\1.downsample.\2."),
)
_UPDATE_RULES = (
    (r"^encoder\.convc([12])\.", r"motion_encoder.convcorr\1.0."),
    (r"^encoder\.convf([12])\.", r"motion_encoder.convflow\1.0."),
    (r"^encoder\.conv\.", "motion_encoder.conv.0."),
    (r"^gru\.conv([zrq])([12])\.", r"recurrent_block.convgru\2.conv\1."),  # SepConvGRU (large)
    (r"^gru\.conv([zrq])\.", r"recurrent_block.convgru1.conv\1."),  # ConvGRU (small)
    (r"^flow_head\.conv([12])\.", r"flow_head.conv\1."),
)
_MASK_RULES = ((r"^mask\.0\.", "mask_predictor.convrelu.0."), (r"^mask\.2\.", "mask_predictor.conv."))


def is_original_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(re.match(r"^(module\.)?(fnet|cnet)\.", k) for k in state_dict)


def _original_arch(keys: Iterable[str]) -> str:
    # Only the large model has the convex-upsampling mask head.
    return "raft_large" if any(k.startswith("update_block.mask.") for k in keys) else "raft_small"


def _rename(key: str, rules) -> str | None:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def _original_key_to_torchvision(key: str, arch: str) -> str | None:
    head, _, rest = key.partition(".")
    if head in ("fnet", "cnet"):
        new = _rename(rest, _ENCODER_RULES[arch] + _ENCODER_COMMON)
        prefix = "feature_encoder." if head == "fnet" else "context_encoder."
        return None if new is None else prefix + new
    if head == "update_block":
        new = _rename(rest, _UPDATE_RULES)
        if new is not None:
            return "update_block." + new
        return _rename(rest, _MASK_RULES)
    return None


def convert_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original-RAFT state dict to torchvision's key names.

    Raises:
        ValueError: listing keys no rule maps, or a duplicated module (norm3/downsample.1)
            whose two copies differ.
    """
    stripped = {k.removeprefix("module."): v for k, v in state_dict.items()}
    arch = _original_arch(stripped)
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in stripped.items():
        new = _original_key_to_torchvision(key, arch)
        if new is None:
            unmapped.append(key)
        elif new in out and not torch.equal(out[new], value):
            raise ValueError(f"original RAFT checkpoint: two different tensors map to {new!r} (one is {key!r})")
        else:
            out[new] = value
    if unmapped:
        raise ValueError(
            f"original RAFT checkpoint has {len(unmapped)} key(s) with no torchvision equivalent: {_preview(unmapped)}"
        )
    return out


def _preview(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def raft_arch_of(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Which architecture a torchvision-layout state dict belongs to."""
    return "raft_large" if "mask_predictor.conv.weight" in state_dict else "raft_small"


def load_raft(arch: str, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> torch.nn.Module:
    """A torchvision RAFT of ``arch`` (CPU, eval) with the given weights in either layout.

    Every model key must be present with the right shape (``num_batches_tracked`` counters
    excepted: they do not affect inference) and every file key must be used.

    Raises:
        ValueError: naming ``source``, for an architecture mismatch, unmapped, missing or
            unexpected keys, or shape mismatches.
    """
    if arch not in RAFT_ARCHITECTURES:
        raise ValueError(f"unknown RAFT architecture {arch!r}; expected one of {RAFT_ARCHITECTURES}")
    if not has_raft_weights(state_dict):
        raise ValueError(
            f"{source} holds no RAFT weights ({len(state_dict)} tensors such as "
            f"[{_preview(sorted(map(str, state_dict)), 4)}]); choose a RAFT checkpoint for {arch}"
        )
    sd = convert_original_state_dict(state_dict) if is_original_layout(state_dict) else dict(state_dict)
    found = raft_arch_of(sd)
    if found != arch:
        raise ValueError(f"{source} holds {found} weights, not {arch}: choose method={found} or a {arch} file")
    model = build_raft(arch)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match torchvision's {arch}: missing {len(missing)} key(s) [{_preview(missing)}], "
            f"unexpected {len(unexpected)} key(s) [{_preview(unexpected)}]"
        )
    wrong = [
        f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"{source}: shape mismatch for {arch}: {_preview(wrong, 5)}")
    merged = {k: sd.get(k, v) for k, v in expected.items()}
    with torch.inference_mode(False), torch.no_grad():
        model.load_state_dict(merged, strict=True)  # copies into the model's ordinary tensors
    return model


class RaftCache:
    """Loaded RAFT models keyed by (architecture, file), reloaded only when the file's
    modification time changes. Models stay where the caller last put them (callers move them
    back to the offload device after use)."""

    def __init__(self, reader: Callable[[str], Mapping[str, torch.Tensor]] = read_state_dict):
        self._reader = reader
        self._models: dict[tuple[str, str], tuple[int, torch.nn.Module]] = {}
        self.loads = 0  # files read so far (for tests and logs)

    def get(self, arch: str, path: str) -> torch.nn.Module:
        key = (arch, os.path.realpath(path))
        mtime = os.stat(path).st_mtime_ns
        hit = self._models.get(key)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        self._models.pop(key, None)  # drop a stale model before loading its replacement
        model = load_raft(arch, self._reader(path), source=f"raft_weights: '{os.path.basename(path)}'")
        self.loads += 1
        log.info("loaded %s weights from %s", arch, path)
        self._models[key] = (mtime, model)
        return model

    def clear(self) -> None:
        self._models.clear()
