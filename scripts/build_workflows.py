"""Regenerate the drag-and-drop UI workflows (``workflows/<name>.json``) from their API twins
(``workflows/api/<name>.json``, the source of truth), using a real ComfyUI's ``/object_info``
for each node's widget order. Run after changing a workflow or a node's inputs:

    .venv/bin/python scripts/build_workflows.py
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


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, ComfyServer(Path(tmp)) as server:
        info = server.get("/object_info")
    for path in api_workflows():
        api = load_api(path)
        titles = {nid: node.get("_meta", {}).get("title") for nid, node in api.items()}
        ui = api_to_ui(strip_meta(api), info, titles)
        assert ui_to_api(ui, info) == strip_meta(api), f"{path.name}: round trip failed"
        out = WORKFLOWS / path.name
        out.write_text(json.dumps(ui, indent=1) + "\n")
        print(f"wrote {out.relative_to(ROOT)} from {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    assert API_DIR.exists()
    sys.exit(main())
