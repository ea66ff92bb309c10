"""Regenerate the drag-and-drop UI workflows (``workflows/<name>.json``) from their API twins
(``workflows/api/<name>.json``, the source of truth), using a real ComfyUI's ``/object_info``
for each node's widget order, ``workflow_layout`` for groups and positions and
``workflow_notes`` for the Notes. Run after changing a workflow, a node's inputs or a note:

    .venv/bin/python scripts/build_workflows.py

A workflow without its own entry in ``workflow_notes.WORKFLOWS`` is laid out from its node
types alone. The server tests check that every UI file is exactly what this script writes.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from workflow_format import api_to_ui, strip_meta, ui_to_api  # noqa: E402

from ve_testkit.server import ComfyServer  # noqa: E402
from ve_testkit.workflows import API_DIR, WORKFLOWS, api_workflows, load_api  # noqa: E402


def ui_for(path: Path, info: dict) -> dict:
    """The UI workflow for one API file (raises if it does not convert back to the same prompt)."""
    api = load_api(path)
    titles = {nid: node.get("_meta", {}).get("title") for nid, node in api.items()}
    ui = api_to_ui(strip_meta(api), info, titles, name=path.stem)
    if ui_to_api(ui, info) != strip_meta(api):
        raise ValueError(f"{path.name}: the UI file would not convert back to the API prompt")
    return ui


def render(ui: dict) -> str:
    return json.dumps(ui, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, ComfyServer(Path(tmp)) as server:
        info = server.get("/object_info")
    for path in api_workflows():
        out = WORKFLOWS / path.name
        out.write_text(render(ui_for(path, info)))
        print(f"wrote {out.relative_to(ROOT)} from {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    assert API_DIR.exists()
    sys.exit(main())
