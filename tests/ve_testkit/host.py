"""Import the real ComfyUI (0.3.75 from scripts/setup_host.sh, or $COMFYUI_PATH) in-process.

Order matters (see shared/reference/comfy_host.md §4 "Import order"): comfy/ on sys.path,
``args.cpu``, ``utils.extra_config`` before ``nodes`` (nodes.py puts comfy/ first on sys.path,
after which top-level ``utils`` would resolve to comfy/utils.py).
"""

import os
import sys
import tempfile
from pathlib import Path

from .pack import PACK_ROOT

_IMPORTED = None


def comfy_root() -> Path:
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return Path(env).resolve()
    marker = PACK_ROOT / ".host" / "comfyui_path"
    if marker.exists():
        return Path(marker.read_text().strip())
    return PACK_ROOT / ".host" / "ComfyUI"


def import_host(base_dir: str | None = None, cpu: bool = True):
    """Import ComfyUI once per process; returns a namespace of the host modules.

    ``base_dir`` (default: a fresh temp dir) receives input/, output/, temp/ and models/ so
    tests never write into the host tree. ``cpu=False`` (benchmarks only) lets ComfyUI pick
    the accelerator.
    """
    global _IMPORTED
    if _IMPORTED is not None:
        return _IMPORTED
    root = comfy_root()
    if not (root / "main.py").exists():
        raise RuntimeError(f"no ComfyUI at {root}: run `make setup` (or set COMFYUI_PATH)")
    sys.path.insert(0, str(root))

    from comfy.cli_args import args

    args.cpu = cpu
    import folder_paths
    import utils.extra_config  # noqa: F401  (must precede `import nodes`)

    base = Path(base_dir or tempfile.mkdtemp(prefix="ve_host_"))
    for sub in ("input", "output", "temp", "models"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(base / "input"))
    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_temp_directory(str(base / "temp"))

    import comfy.model_management
    import comfy.model_patcher
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import comfy.utils
    import comfy_extras.nodes_custom_sampler

    import nodes

    class Host:
        pass

    host = Host()
    host.root = root
    host.base = base
    host.args = args
    host.folder_paths = folder_paths
    host.comfy = comfy
    host.nodes = nodes
    host.custom_sampler = comfy_extras.nodes_custom_sampler
    _IMPORTED = host
    return host
