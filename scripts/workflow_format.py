"""Convert between ComfyUI's API prompt format and its UI (LiteGraph, drag-and-drop) format.

The API files in ``workflows/api/`` are the source of truth (they are what tests and
``make demo`` queue). ``scripts/build_workflows.py`` turns each into the UI file users drag
into ComfyUI, using a live server's ``/object_info`` to know each node's widget order and
``workflow_layout`` / ``workflow_notes`` for groups, positions and Notes; ``tests/server``
converts the UI files back and checks they match, ``tests/browser`` loads them in the real
frontend.

Frontend conventions followed (ComfyUI frontend 1.32, read from its widget code and checked by
loading the files in it):
- ``widgets_values`` lists every widget input in schema order (required, then optional),
  including widget inputs that are linked (those also appear in ``inputs`` with
  ``"widget": {"name": ...}``);
- an INT with ``control_after_generate`` (or, when the schema does not say, an INT named
  ``seed`` / ``noise_seed``) is followed by its control value ("fixed");
- a combo with an upload flag (``image_upload``/``video_upload``) adds an upload button widget
  after all the others, whose value is "image";
- optional non-widget inputs carry ``"shape": 7``;
- Note nodes are frontend-only: they have no schema and no place in the API prompt.
"""

from __future__ import annotations

import copy

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
BYPASS = 4  # LiteGraph node mode: bypassed (drawn purple; inputs passed through to outputs of their type)
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


def _has_control(name: str, typ: str, opts: dict) -> bool:
    """The frontend adds a "control after generate" widget (useIntWidget: the schema's flag, else
    the name)."""
    flag = opts.get("control_after_generate")
    return typ == "INT" and (flag if flag is not None else name in ("seed", "noise_seed"))


def _extras(name: str, typ: str, opts: dict) -> list:
    """Values of the widgets the frontend adds right after this one."""
    return ["fixed"] if _has_control(name, typ, opts) else []


def _trailing(info: dict) -> list:
    """Values of the widgets the frontend adds after all the schema's ones (the upload button)."""
    return ["image"] if any(opts.get(flag) for _n, _t, opts, _o in _inputs(info) for flag in UPLOAD_FLAGS) else []


def _node_parts(node: dict, info: dict) -> tuple[list, list, list, list[str]]:
    """(inputs, widgets_values, pending links, widget kinds for sizing) of one UI node."""
    inputs, widgets, pending, kinds = [], [], [], []
    for name, typ, opts, optional in _inputs(info):
        value = node["inputs"].get(name)
        linked = isinstance(value, list) and len(value) == 2
        if _is_widget(typ, opts):
            if linked:
                widgets.append(opts.get("default"))
                inputs.append({"name": name, "type": typ, "widget": {"name": name}, "link": None})
                pending.append((len(inputs) - 1, value))
            else:
                widgets.append(value if name in node["inputs"] else opts.get("default"))
            extra = _extras(name, typ, opts)
            widgets.extend(extra)
            kinds.append("multiline" if typ == "STRING" and opts.get("multiline") else "line")
            kinds.extend("line" for _ in extra)
        else:
            entry = {"name": name, "type": typ, "link": None}
            if optional:
                entry["shape"] = 7
            inputs.append(entry)
            if linked:
                pending.append((len(inputs) - 1, value))
    trailing = _trailing(info)
    widgets.extend(trailing)
    kinds.extend("line" for _ in trailing)
    return inputs, widgets, pending, kinds


def api_to_ui(prompt: dict, object_info: dict, titles: dict | None = None, name: str | None = None) -> dict:
    """API prompt → UI workflow (version 0.4): nodes in groups by stage, left to right, a Note per
    group (``workflow_layout``, ``workflow_notes``; ``name`` selects the workflow's own spec, which
    may add bypassed UI-only nodes, e.g. an optional ControlNet, wired in with ``rewire``)."""
    from workflow_layout import NOTE_TYPES, STAGE_TITLES, assign_stages, lay_out, node_size
    from workflow_notes import bypassed, overrides, stage_notes

    titles = dict(titles or {})
    extra, rewire = bypassed(name) if name else ({}, {})
    if extra:
        prompt = copy.deepcopy(prompt)
        for nid, changes in rewire.items():
            prompt[nid]["inputs"].update(changes)
        for nid, node in extra.items():
            prompt[nid] = {"class_type": node["class_type"], "inputs": dict(node["inputs"])}
            titles[nid] = node.get("title")
    parts, sizes = {}, {}
    for nid, node in prompt.items():
        info = object_info[node["class_type"]]
        parts[nid] = _node_parts(node, info)
        n_slots = max(sum(1 for i in parts[nid][0] if "widget" not in i), len(info["output"]))
        title = titles.get(nid) or node.get("_meta", {}).get("title") or info.get("display_name") or node["class_type"]
        sizes[nid] = node_size(n_slots, parts[nid][3], title, preview=bool(_trailing(info)))
    spec = overrides(name) if name else {}
    notes = stage_notes(name or "", prompt, object_info, assign_stages(prompt, object_info, spec))
    layout = lay_out(prompt, object_info, sizes, notes, spec)
    ids = sorted(prompt, key=lambda n: (layout.boxes[n].x, layout.boxes[n].y))
    nodes, links, by_id = [], [], {}
    all_pending = []
    for nid in ids:
        node = prompt[nid]
        info = object_info[node["class_type"]]
        inputs, widgets, pending, _kinds = parts[nid]
        outputs = [
            {"name": oname, "type": otype, "slot_index": i, "links": []}
            for i, (otype, oname) in enumerate(zip(info["output"], info.get("output_name", info["output"])))
        ]
        box = layout.boxes[nid]
        ui_node = {
            "id": int(nid),
            "type": node["class_type"],
            "pos": [box.x, box.y],
            "size": [box.w, box.h],
            "flags": {},
            "order": len(nodes),
            "mode": BYPASS if nid in extra else 0,
            "inputs": inputs,
            "outputs": outputs,
            "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": widgets,
        }
        title = titles.get(nid) or node.get("_meta", {}).get("title")
        if title:
            ui_node["title"] = title
        by_id[ui_node["id"]] = ui_node
        nodes.append(ui_node)
        all_pending.extend((ui_node, i, v) for i, v in pending)
    link_id = 0
    for dst, input_index, (src, slot) in all_pending:
        link_id += 1
        dst["inputs"][input_index]["link"] = link_id
        src_node = by_id[int(src)]
        src_node["outputs"][slot]["links"].append(link_id)
        links.append([link_id, int(src), slot, dst["id"], input_index, src_node["outputs"][slot]["type"]])
    next_id = max(by_id) + 1
    for stage, box, text in layout.notes:
        nodes.append(
            {
                "id": next_id,
                "type": NOTE_TYPES[0],
                "pos": [box.x, box.y],
                "size": [box.w, box.h],
                "flags": {},
                "order": len(nodes),
                "mode": 0,
                "inputs": [],
                "outputs": [],
                "title": f"Read me: {STAGE_TITLES[stage].split(' · ')[-1]}",
                "properties": {},
                "widgets_values": [text],
                "color": "#432",
                "bgcolor": "#653",
            }
        )
        next_id += 1
    return {
        "last_node_id": next_id - 1,
        "last_link_id": link_id,
        "nodes": nodes,
        "links": links,
        "groups": layout.groups,
        "config": {},
        "extra": {"ds": {"scale": 0.5, "offset": [40, 40]}},
        "version": 0.4,
    }


def _resolve(link_id: int, links: dict, nodes: dict) -> list | None:
    """[source id, slot] a link stands for in the API prompt: through bypassed nodes to the input
    of the output's type (the same slot first, as the frontend does); None from a muted node."""
    _lid, src_id, slot = links[link_id][:3]
    src = nodes[src_id]
    mode = src.get("mode", 0)
    if mode == 0:
        return [str(src_id), slot]
    if mode != BYPASS:
        return None
    out_type = src["outputs"][slot]["type"]
    ins = src.get("inputs", [])
    same = [ins[slot]] if slot < len(ins) and ins[slot]["type"] == out_type else []
    for inp in same + [i for i in ins if i["type"] == out_type]:
        if inp.get("link") is not None:
            return _resolve(inp["link"], links, nodes)
    return None


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """UI workflow → API prompt (what the frontend's "Save (API)" produces, minus _meta):
    Notes, muted and bypassed nodes left out, links through bypassed nodes passed on."""
    from workflow_layout import NOTE_TYPES

    links = {link[0]: link for link in workflow["links"]}
    by_id = {n["id"]: n for n in workflow["nodes"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0 or node["type"] in NOTE_TYPES:
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
                for _ in _extras(name, typ, opts):
                    values.pop(0)
                source = _resolve(linked[name], links, by_id) if name in linked else None
                inputs[name] = source if source is not None else value
            elif name in linked:
                source = _resolve(linked[name], links, by_id)
                if source is not None:
                    inputs[name] = source
        for _ in _trailing(info):
            if not values:
                raise ValueError(f"node {node['id']} ({node['type']}): widgets_values lack the upload button's value")
            values.pop(0)
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} unused widgets_values {values}")
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def strip_meta(prompt: dict) -> dict:
    out = copy.deepcopy(prompt)
    for node in out.values():
        node.pop("_meta", None)
    return out
