"""Browser tier: the real ComfyUI frontend (the ``comfyui-frontend-package`` ComfyUI serves) in
headless Debian Chromium driven by Playwright, against one real ComfyUI server with the pack.
Skips, saying why, where Playwright or Chromium is missing. The fixtures are module-scoped:
Playwright's sync API holds an event loop while it runs, which must be gone before later tiers
call ``asyncio.run``."""

import json
import shutil

import pytest

from ve_testkit.browser import Frontend, skip_reason
from ve_testkit.pack import PACK_ROOT
from ve_testkit.server import ComfyServer
from ve_testkit.workflows import WORKFLOWS

SCREENSHOTS = PACK_ROOT / "output" / "browser"
RESULTS: dict[str, dict] = {}  # workflow name → what its test found (for the summary line)


def pytest_collection_modifyitems(config, items):
    reason = skip_reason()
    if reason:
        for item in items:
            if "tests/browser" in str(item.path).replace("\\", "/"):
                item.add_marker(pytest.mark.skip(reason=reason))


# Loader node type → its model folder; the file name is the loader's first widget value.
MODEL_LOADERS = {"CheckpointLoaderSimple": "checkpoints", "ControlNetLoader": "controlnet"}


def _model_files() -> set[tuple[str, str]]:
    """(folder, file name) of every model file a UI workflow's loaders name (bypassed ones too)."""
    files = set()
    for path in WORKFLOWS.glob("*.json"):
        for node in json.loads(path.read_text())["nodes"]:
            folder = MODEL_LOADERS.get(node["type"])
            values = node.get("widgets_values") or []
            if folder and values and isinstance(values[0], str):
                files.add((folder, values[0]))
    return files


@pytest.fixture(scope="module")
def browser_server(tmp_path_factory):
    """One server for every workflow: the sample clip in input/ and an empty file per model file
    the workflows' loaders name (listed by the loader's combo, never loaded)."""
    base = tmp_path_factory.mktemp("comfy_browser")
    (base / "input").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(WORKFLOWS / "assets" / "sample.mp4", base / "input" / "sample.mp4")
    for folder, name in _model_files():
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        (base / "models" / folder / name).write_bytes(b"")
    with ComfyServer(base) as server:
        yield server


@pytest.fixture(scope="module")
def object_info(browser_server):
    return browser_server.get("/object_info")


@pytest.fixture(scope="module")
def frontend(browser_server):
    with Frontend(browser_server) as fe:
        yield fe


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    total = len(list(p for p in WORKFLOWS.glob("*.json")))
    ok = sum(1 for r in RESULTS.values() if r.get("ok"))
    missing = sum(r.get("missing", 0) for r in RESULTS.values())
    errors = sum(r.get("page_errors", 0) for r in RESULTS.values())
    terminalreporter.write_line(
        f"browser tier: {ok}/{total} UI workflows loaded in the ComfyUI frontend, {missing} missing node types, "
        f"{errors} page errors; screenshots in {SCREENSHOTS.relative_to(PACK_ROOT)}/"
    )
    (SCREENSHOTS / "results.json").write_text(json.dumps(RESULTS, indent=1) + "\n")
