"""The pack's import contract and repository hygiene (no host needed)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_pack_loads_no_host_and_registers_only_the_entrypoint(tmp_path):
    code = (
        "import sys, os; sys.path.insert(0, {!r})\n"
        "from ve_testkit.pack import load_pack\n"
        "before = set(os.listdir('.'))\n"
        "pack = load_pack()\n"
        "assert hasattr(pack, 'comfy_entrypoint')\n"
        "assert not hasattr(pack, 'NODE_CLASS_MAPPINGS'), 'V1 mappings would hide every V3 node'\n"
        "heavy = [m for m in ('comfy', 'comfy_api', 'folder_paths', 'nodes', 'torch', 'cv2') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert set(os.listdir('.')) == before\n"
    ).format(str(ROOT / "tests"))
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


def test_no_bytecode_or_host_files_tracked():
    """Governed ComfyUI builds refuse packs that ship __pycache__/.pyc (comfy_upstream.md §7)."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not files:  # not a git checkout (e.g. an sdist): nothing to check
        return
    bad = [f for f in files if "__pycache__" in f or f.endswith(".pyc") or f.startswith((".venv/", ".host/"))]
    assert not bad, bad


def test_requirements_do_not_pin_torch():
    lines = [line.split("#")[0].strip().lower() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [line for line in lines if line]
    assert reqs, "requirements.txt lists nothing"
    assert not [r for r in reqs if r.startswith(("torch", "torchvision", "torchaudio"))]


def test_pure_folders_import_no_comfy():
    """``flow/``, ``attention/``, ``inversion/``, ``media/`` are pure torch: only ``nodes/`` and
    ``adapters/`` may import ComfyUI (``comfy``, ``comfy_api``, ``folder_paths``, ``latent_preview``)."""
    import ast

    host_modules = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "latent_preview", "nodes", "server")
    offenders = []
    for folder in ("flow", "attention", "inversion", "media"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                else:
                    continue
                offenders += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in host_modules
                ]
    assert not offenders, offenders
    text = subprocess.run(
        ["grep", "-rlE", "import comfy|from comfy", "flow", "attention", "inversion", "media"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    assert text == "", text
