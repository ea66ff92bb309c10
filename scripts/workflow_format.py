"""Convert between ComfyUI's API prompt format and its UI (LiteGraph, drag-and-drop) format.

The API files in ``workflows/api/`` are the source of truth (they are what tests and
``make demo`` queue). ``scripts/build_workflows.py`` turns each into the UI file users drag
into ComfyUI, using a live server's ``/object_info`` to know each node's widget order, and
``tests/server`` converts the UI files back and checks they match.

Frontend conventions followed (checked against comfyui-workflow-templates 0.7.25):
- ``widgets_values`` lists every widget input in schema order (required, then optional),
  including widget inputs that are linked (those also appear in ``inputs`` with
  ``"widget": {"name": ...}``);
- an INT with ``control_after_generate`` is followed by its control value ("fixed");
- a combo with an upload flag (``image_upload``/``video_upload``) is followed by "image";
- optional non-widget inputs carry ``"shape": 7``.
"""

from __future__ import annotations

import copy

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload")


def _inputs(info: dict) -> list[tuple[str, str, dict, bool]]:
    """[(name, type, options, optional)] in the frontend's order."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = info["input"][section][name]
            typ = "COMBO" if isinstance(spec[0], list) else spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, typ, opts, section == "optional"))
    return out


def _is_widget(typ: str, opts: dict) -> bool:
    return typ in WIDGET_TYPES and not opts.get("forceInput", False)


def _extras(opts: dict) -> list:
    extra = []
    if opts.get("control_after_generate"):
        extra.append("fixed")
    if any(opts.get(flag) for flag in UPLOAD_FLAGS):
        extra.append("image")
    return extra


def _depths(prompt: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(nid: str, stack=()) -> int:
        if nid in depth:
            return depth[nid]
        if nid in stack:
            raise ValueError(f"cycle at node {nid}")
        parents = [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2]
        depth[nid] = 1 + max((visit(str(p), stack + (nid,)) for p in parents), default=-1)
        return depth[nid]

    for nid in prompt:
        visit(nid)
    return depth


def api_to_ui(prompt: dict, object_info: dict, titles: dict | None = None) -> dict:
    """API prompt → UI workflow (version 0.4) laid out left to right by dependency depth."""
    titles = titles or {}
    depths = _depths(prompt)
    column_rows: dict[int, int] = {}
    nodes, links = [], []
    out_links: dict[tuple[str, int], list[int]] = {}
    ids = sorted(prompt, key=lambda n: (depths[n], int(n) if n.isdigit() else n))
    link_id = 0
    pending = []
    for nid in ids:
        node = prompt[nid]
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, typ, opts, optional in _inputs(info):
            value = node["inputs"].get(name)
            linked = isinstance(value, list) and len(value) == 2
            if _is_widget(typ, opts):
                if linked:
                    widgets.append(opts.get("default"))
                    inputs.append({"name": name, "type": typ, "widget": {"name": name}, "link": None})
                    pending.append((len(nodes), len(inputs) - 1, value, typ))
                else:
                    widgets.append(value if name in node["inputs"] else opts.get("default"))
                widgets.extend(_extras(opts))
            else:
                entry = {"name": name, "type": typ, "link": None}
                if optional:
                    entry["shape"] = 7
                inputs.append(entry)
                if linked:
                    pending.append((len(nodes), len(inputs) - 1, value, typ))
        outputs = [{"name": oname, "type": otype, "slot_index": i, "links": []}
                   for i, (otype, oname) in enumerate(zip(info["output"], info.get("output_name", info["output"])))]
        col = depths[nid]
        row = column_rows.get(col, 0)
        column_rows[col] = row + 1
        ui_node = {"id": int(nid), "type": node["class_type"], "pos": [40 + 380 * col, 40 + 320 * row],
                   "size": [340, 80 + 26 * (len(widgets) + len(inputs))], "flags": {}, "order": len(nodes),
                   "mode": 0, "inputs": inputs, "outputs": outputs,
                   "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets}
        title = titles.get(nid) or node.get("_meta", {}).get("title")
        if title:
            ui_node["title"] = title
        nodes.append(ui_node)
    by_id = {n["id"]: n for n in nodes}
    for node_index, input_index, (src, slot), _typ in pending:
        link_id += 1
        dst = nodes[node_index]
        dst["inputs"][input_index]["link"] = link_id
        src_node = by_id[int(src)]
        src_node["outputs"][slot]["links"].append(link_id)
        out_links.setdefault((str(src), slot), []).append(link_id)
        links.append([link_id, int(src), slot, dst["id"], input_index, src_node["outputs"][slot]["type"]])
    return {"last_node_id": max(by_id), "last_link_id": link_id, "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """UI workflow → API prompt (what the frontend's "Save (API)" produces, minus _meta)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        info = object_info[node["type"]]
        values = list(node.get("widgets_values") or [])
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        inputs = {}
        for name, typ, opts, _optional in _inputs(info):
            if _is_widget(typ, opts):
                if not values:
                    raise ValueError(f"node {node['id']} ({node['type']}): widgets_values too short at '{name}'")
                value = values.pop(0)
                for _ in _extras(opts):
                    values.pop(0)
                if name in linked:
                    link = links[linked[name]]
                    inputs[name] = [str(link[1]), link[2]]
                else:
                    inputs[name] = value
            elif name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} unused widgets_values {values}")
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def strip_meta(prompt: dict) -> dict:
    out = copy.deepcopy(prompt)
    for node in out.values():
        node.pop("_meta", None)
    return out
