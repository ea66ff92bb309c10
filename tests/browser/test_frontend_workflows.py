"""Every shipped UI workflow, loaded through the real ComfyUI frontend like a person's
drag-and-drop: no missing node types, no page errors, every link connected, every widget value
one the node's schema accepts, the prompt the frontend would queue equal to the API twin, and a
layout that reads (no node on another, every node inside its stage's group, groups left to
right). A screenshot of each (fit to view) is saved under output/browser/."""

import json
import time

import pytest

from ve_testkit.schema import value_problems
from ve_testkit.workflows import API_DIR, WORKFLOWS, load_api

from .conftest import RESULTS, SCREENSHOTS

NOTE_TYPES = {"Note", "MarkdownNote"}


def ui_workflows():
    return sorted(WORKFLOWS.glob("*.json"))


_LOADED: dict[str, dict] = {}


def _load(frontend, path):
    if path.stem not in _LOADED:
        errors_before = len(frontend.page_errors)
        console_before = len(frontend.console_errors)
        t0 = time.perf_counter()
        state = frontend.load(json.loads(path.read_text()), path.name)
        state["seconds"] = time.perf_counter() - t0
        frontend.screenshot(SCREENSHOTS / f"{path.stem}.png")
        state["dialogs"] = frontend.open_dialogs()
        state["page_errors"] = frontend.page_errors[errors_before:]
        state["console_errors"] = frontend.console_errors[console_before:]
        _LOADED[path.stem] = state
    return _LOADED[path.stem]


def _strip(prompt: dict) -> dict:
    return {nid: {"class_type": n["class_type"], "inputs": n["inputs"]} for nid, n in prompt.items()}


def _rect(node) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 of a node with its title bar, at the frontend's own size (never smaller
    than what its widgets need)."""
    x, y = node["pos"]
    w = max(node["size"][0], node["min_size"][0])
    h = max(node["size"][1], node["min_size"][1])
    return x, y - 30, x + w, y + h


@pytest.mark.parametrize("path", ui_workflows(), ids=lambda p: p.stem)
def test_workflow_loads_in_the_frontend(frontend, object_info, path):
    state = _load(frontend, path)
    record = RESULTS.setdefault(path.stem, {})
    missing = sorted({n["type"] for n in state["nodes"] if not n["known"] or n["has_errors"]})
    record.update(missing=len(missing), page_errors=len(state["page_errors"]), seconds=round(state["seconds"], 2))
    assert not missing, f"node types the frontend does not know: {missing}"
    assert not state["page_errors"], state["page_errors"]
    assert not state["console_errors"], state["console_errors"]
    assert not state["dialogs"], f"dialogs left open over the screenshot: {state['dialogs']}"

    wf = json.loads(path.read_text())
    assert len(state["nodes"]) == len(wf["nodes"])
    assert state["link_count"] == len(wf["links"])
    for node in state["nodes"]:
        for inp in node["inputs"]:
            if inp["link"] is None:
                continue
            where = f"{node['title']} ({node['type']}).{inp['name']}"
            assert not inp.get("dangling"), f"{where}: link {inp['link']} not in the graph"
            assert inp["target"] == node["id"] and inp["target_slot"] == inp["slot"], where
            assert inp["listed"], f"{where}: the source output does not list the link"
            assert inp["valid"], f"{where}: {inp['src_type']} → {inp['dst_type']}"
        for w in node["widgets"]:
            if w["options"] is not None and w["type"] == "combo":
                assert w["value"] in w["options"], f"{node['title']}.{w['name']}={w['value']!r} not offered"

    prompt = state["prompt"]
    assert value_problems(prompt, object_info) == []
    api = API_DIR / path.name
    if api.exists():
        twin = load_api(api)
        assert _strip(prompt) == _strip(twin), "the frontend would queue something else than the API twin"
        titles = {nid: n.get("_meta", {}).get("title") for nid, n in twin.items()}
        shown = {str(n["id"]): n["title"] for n in state["nodes"] if n["type"] not in NOTE_TYPES}
        assert all(shown[nid] == t for nid, t in titles.items() if t), "titles differ from the API twin's"
    record["ok"] = True


@pytest.mark.parametrize("path", ui_workflows(), ids=lambda p: p.stem)
def test_workflow_layout_reads_left_to_right(frontend, path):
    state = _load(frontend, path)
    nodes = state["nodes"]
    groups = state["groups"]
    assert groups, "no groups"
    assert any(n["type"] in NOTE_TYPES for n in nodes), "no Note"
    rects = {n["id"]: _rect(n) for n in nodes}
    for n in nodes:
        # Every node, Notes too, fits the size the frontend needs for its widgets ...
        assert n["size"][1] + 1 >= n["min_size"][1] and n["size"][0] + 1 >= n["min_size"][0], (
            f"{n['title']}: size {n['size']} smaller than the frontend's {n['min_size']}"
        )
    ids = sorted(rects)
    for i, a in enumerate(ids):  # ... no node lies on another ...
        for b in ids[i + 1 :]:
            ra, rb = rects[a], rects[b]
            overlap = ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]
            assert not overlap, f"nodes {a} and {b} overlap: {ra} {rb}"
    inside = {}
    for n in nodes:  # ... and each lies inside exactly one group.
        x0, y0, x1, y1 = rects[n["id"]]
        hits = [
            g["title"]
            for g in groups
            if g["bounding"][0] <= x0
            and x1 <= g["bounding"][0] + g["bounding"][2]
            and g["bounding"][1] <= y0
            and y1 <= g["bounding"][1] + g["bounding"][3]
        ]
        assert len(hits) == 1, f"{n['title']}: in groups {hits}"
        inside[n["id"]] = hits[0]
    # Groups stand left to right and every link runs to the same or a later group.
    order = {g["title"]: i for i, g in enumerate(sorted(groups, key=lambda g: g["bounding"][0]))}
    for n in nodes:
        for inp in n["inputs"]:
            if inp["link"] is not None:
                assert order[inside[inp["origin"]]] <= order[inside[n["id"]]], (
                    f"{n['title']}.{inp['name']} reads from a group on its right"
                )
