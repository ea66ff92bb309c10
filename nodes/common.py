"""Small helpers shared by the node modules (ComfyUI-side only)."""

from __future__ import annotations

from contextlib import contextmanager


def comfy_attention():
    """ComfyUI's own attention kernel (honours the user's --use-*-attention choice) with the
    ``attn_fn(q, k, v, heads)`` signature the attention modules take."""
    from comfy.ldm.modules.attention import optimized_attention

    return lambda q, k, v, heads: optimized_attention(q, k, v, heads)


def parse_int_list(text: str, input_name: str) -> list[int]:
    """'0, 8,16' → [0, 8, 16]; empty → []. Raises ValueError naming the input."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        values = [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{input_name}: '{text}' is not a comma-separated list of frame numbers, e.g. '0, 8, 16'") from None
    if any(v < 0 for v in values):
        raise ValueError(f"{input_name}: frame numbers must be >= 0, got '{text}'")
    return sorted(set(values))


def check_choice(value, ids, input_name: str):
    """``value`` if it is one of ``ids`` (a combo's option ids; ComfyUI 0.3.75 does not check V3
    combos), else a ValueError naming the input and listing the choices."""
    ids = list(ids)
    if value not in ids:
        shown = ", ".join(repr(i) for i in ids[:12]) + (", …" if len(ids) > 12 else "")
        raise ValueError(f"{input_name}: {value!r} is not one of the choices ({shown}); pick one of them")
    return value


def choice_id(value, options: dict, input_name: str):
    """The option id of a combo value given as its label (a key of ``options``) or as the id
    itself (a value); anything else is a ValueError naming the input (ComfyUI 0.3.75 does
    not check V3 combos)."""
    if value in options:
        return options[value]
    if value in options.values():
        return value
    return check_choice(value, list(options), input_name)


@contextmanager
def input_errors(input_name: str):
    """Re-raise a ValueError from a parser as one naming ``input_name`` (the original kept as
    ``__cause__``)."""
    try:
        yield
    except ValueError as err:
        if str(err).startswith(f"{input_name}:"):
            raise
        raise ValueError(f"{input_name}: {err}") from err


def check_filename_prefix(prefix, input_name: str = "filename_prefix") -> str:
    """A save prefix that stays inside ComfyUI's output folder: no absolute path, no ``..``
    component, no NUL or other control character. Returns it unchanged."""
    if not isinstance(prefix, str):
        raise ValueError(f"{input_name}: expected text, got {type(prefix).__name__}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in prefix):
        raise ValueError(f"{input_name}: contains a control character (e.g. a NUL byte); use letters, digits, "
                         "'_', '-', '/' for subfolders")
    parts = prefix.replace("\\", "/").split("/")
    if prefix.startswith(("/", "\\")) or (len(prefix) > 1 and prefix[1] == ":" and prefix[0].isalpha()):
        raise ValueError(f"{input_name}: '{prefix}' is an absolute path; give a path inside ComfyUI's output "
                         "folder, e.g. 'VideoEdit/my_edit'")
    if ".." in parts:
        raise ValueError(f"{input_name}: '{prefix}' climbs out of ComfyUI's output folder with '..'; give a path "
                         "inside it, e.g. 'VideoEdit/my_edit'")
    return prefix


def available_ram() -> int:
    """Bytes of RAM free for new tensors (0 = unknown: memory guards are off)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil comes with ComfyUI; without it the guards are off, not the nodes
        return 0


def _custom_types():
    from comfy_api.latest import io

    return io.Custom("VE_INVERSION"), io.Custom("VE_TRAJECTORIES"), io.Custom("OPTICAL_FLOW")


VE_INVERSION, VE_TRAJECTORIES, OPTICAL_FLOW = _custom_types()
