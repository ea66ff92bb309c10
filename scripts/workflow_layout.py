"""Where each node of a UI workflow goes: stages, columns, groups and the Note of each group.

A workflow reads left to right in five stages, each a ComfyUI frontend group:

    Load → Flow → Inversion → Edit → Decode / Save

The stage of a node comes from its type, through the schema ``/object_info`` gives (category,
output types, output node flag), so a workflow nobody wrote a layout for is laid out too; the
per-workflow spec in ``workflow_notes.WORKFLOWS`` may move single nodes. Links always run to the
same or a later stage (a node never sits left of a node it reads from). Inside a group, nodes
stand in columns by their depth within the group, the group's Note on top.

Node sizes follow the frontend's own measure (``LGraphNode.computeSize`` of ComfyUI frontend
1.32: 20 px per slot row, 24 px per widget, 30 px title bar above ``pos``) so that nodes do not
overlap once the frontend draws them; ``tests/browser`` checks this in the real frontend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STAGES = ("load", "flow", "inversion", "edit", "save")
STAGE_TITLES = {
    "load": "1 · Load",
    "flow": "2 · Optical flow",
    "inversion": "3 · Inversion",
    "edit": "4 · Edit",
    "save": "5 · Decode / Save",
}
STAGE_COLOURS = {"load": "#3f789e", "flow": "#8A8", "inversion": "#b58b2a", "edit": "#a1309b", "save": "#444"}
NOTE_TYPES = ("Note", "MarkdownNote")  # frontend-only nodes: not in /object_info, never in the API prompt

# Core node types whose stage is not obvious from the category alone.
CORE_STAGES = {
    "CheckpointLoaderSimple": "load",
    "VAEEncode": "load",
    "CLIPTextEncode": "load",
    "LoadImage": "load",
    "ControlNetLoader": "load",
    "KSamplerSelect": "edit",
    "SamplerCustom": "edit",
    "KSampler": "edit",
    "VAEDecode": "save",
    "SaveImage": "save",
    "PreviewImage": "save",
}
FLOW_TYPES = {"OPTICAL_FLOW", "VE_TRAJECTORIES", "MASK"}

TITLE_H = 30  # the frontend's title bar, drawn above a node's pos
SLOT_H = 20
WIDGET_H = 24
MULTILINE_H = 110  # a prompt box with room for two or three lines
NODE_W = 340
COL_GAP = 70
ROW_GAP = 44  # room for the node-source badge the frontend draws above a title
GROUP_PAD = 24
GROUP_HEADER = 56  # group title (font 24) plus a margin
GROUP_GAP = 80
NOTE_CHAR_W = 7.0  # average width of a character of the Note's textarea at zoom 1
NOTE_LINE_H = 14
PREVIEW_H = 230  # the image/video preview the frontend shows under a loader with an upload button


@dataclass
class Box:
    x: float
    y: float
    w: float
    h: float  # body height, without the title bar


@dataclass
class Layout:
    stage: dict[str, str]  # node id → stage
    boxes: dict[str, Box]  # node id → position and size
    groups: list[dict] = field(default_factory=list)  # frontend group dicts
    notes: list[tuple[str, Box, str]] = field(default_factory=list)  # (stage, box, text)


def _links(prompt: dict) -> list[tuple[str, str]]:
    """(source id, destination id) for every link."""
    return [
        (str(v[0]), nid)
        for nid, node in prompt.items()
        for v in node["inputs"].values()
        if isinstance(v, list) and len(v) == 2
    ]


def auto_stage(class_type: str, info: dict) -> str:
    """The stage a node type belongs to, from its schema alone."""
    if class_type in CORE_STAGES:
        return CORE_STAGES[class_type]
    category = (info.get("category") or "").lower()
    outputs = set(info.get("output") or [])
    if info.get("output_node"):
        return "save"
    if outputs and outputs <= FLOW_TYPES or category.endswith("/flow"):
        return "flow"
    if category.endswith("/inversion"):
        return "inversion"
    if (
        category.endswith("/video")
        or category.startswith("loaders")
        or category.startswith("conditioning")
        or "preprocessor" in category
    ):  # ControlNet hints are prepared with the inputs
        return "load"
    if category.startswith("latent"):
        return "save" if "decode" in class_type.lower() else "load"
    if "quality" in category:
        return "save"
    return "edit"


def assign_stages(prompt: dict, object_info: dict, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Stage of every node: by type, then adjusted by the graph so that it reads left to right.

    - a MODEL patch used only by inversion nodes belongs to the inversion (FLATTEN for inversion);
    - a decode whose result is edited further belongs to that later step (not to Decode / Save);
    - a node never stands left of a node it reads from;
    - an output node that shows only flow results (a flow preview) stays with the flow.
    """
    overrides = {str(k): v for k, v in (overrides or {}).items()}
    order = {s: i for i, s in enumerate(STAGES)}
    stage = {
        nid: overrides.get(nid) or auto_stage(node["class_type"], object_info[node["class_type"]])
        for nid, node in prompt.items()
    }
    links = _links(prompt)
    consumers: dict[str, list[str]] = {nid: [] for nid in prompt}
    parents: dict[str, list[str]] = {nid: [] for nid in prompt}
    for src, dst in links:
        consumers[src].append(dst)
        parents[dst].append(src)
    for _ in range(len(prompt)):  # to a fixed point (graphs are small)
        changed = False
        for nid in prompt:
            if nid in overrides or not consumers[nid]:
                continue
            later = {stage[c] for c in consumers[nid]}
            outputs = object_info[prompt[nid]["class_type"]].get("output") or []
            if "MODEL" in outputs and later == {"inversion"} and stage[nid] == "edit":
                new = "inversion"
            elif stage[nid] == "save" and later != {"save"}:
                new = min(later - {"save"}, key=order.get)
            else:
                continue
            if new != stage[nid]:
                stage[nid], changed = new, True
        for nid in _topological(prompt, parents):
            floor = max((order[stage[p]] for p in parents[nid]), default=0)
            if order[stage[nid]] < floor:
                stage[nid], changed = STAGES[floor], True
        if not changed:
            break
    for nid in prompt:
        if (
            object_info[prompt[nid]["class_type"]].get("output_node")
            and parents[nid]
            and {stage[p] for p in parents[nid]} <= {"flow", "load"}
            and "flow" in {stage[p] for p in parents[nid]}
            and nid not in overrides
        ):
            stage[nid] = "flow"
    return stage


def _topological(prompt: dict, parents: dict[str, list[str]]) -> list[str]:
    done: list[str] = []
    seen: set[str] = set()

    def visit(nid: str, stack: tuple = ()) -> None:
        if nid in seen:
            return
        if nid in stack:
            raise ValueError(f"cycle at node {nid}")
        for p in parents[nid]:
            visit(p, stack + (nid,))
        seen.add(nid)
        done.append(nid)

    for nid in sorted(prompt, key=_id_key):
        visit(nid)
    return done


def _id_key(nid: str):
    return (0, int(nid), "") if nid.isdigit() else (1, 0, nid)


def node_size(n_slots: int, widgets: list[str], title: str, preview: bool = False) -> tuple[float, float]:
    """(width, body height) of a node as the frontend measures it. ``widgets`` lists widget kinds:
    "line" for a one-line widget, "multiline" for a text box; ``preview``: room for the preview
    of the loaded file (the frontend adds it once the file is loaded)."""
    h = SLOT_H * n_slots + sum(MULTILINE_H if w == "multiline" else WIDGET_H for w in widgets)
    h += 14 if widgets else 6
    h += PREVIEW_H if preview else 0
    w = max(NODE_W, 8.0 * len(title) + 60)
    return round(w), round(h)


def note_height(text: str, width: float) -> float:
    per_line = max(20, int((width - 24) / NOTE_CHAR_W))
    lines = 0
    for para in text.split("\n"):
        lines += max(1, -(-len(para) // per_line))
    return round(NOTE_LINE_H * lines + 30)


def lay_out(
    prompt: dict,
    object_info: dict,
    sizes: dict[str, tuple[float, float]],
    notes: dict[str, str],
    overrides: dict[str, str] | None = None,
) -> Layout:
    """Positions for every node, one group per stage present, a Note on top of each group.

    ``sizes``: node id → (width, body height); ``notes``: stage → the text of its Note.
    """
    stage = assign_stages(prompt, object_info, overrides)
    parents: dict[str, list[str]] = {nid: [] for nid in prompt}
    for src, dst in _links(prompt):
        parents[dst].append(src)
    depth: dict[str, int] = {}
    for nid in _topological(prompt, parents):
        same = [depth[p] + 1 for p in parents[nid] if stage[p] == stage[nid]]
        depth[nid] = max(same, default=0)
    out = Layout(stage=stage, boxes={})
    x = 0.0
    top = 0.0
    row_of: dict[str, float] = {}
    for gi, st in enumerate(s for s in STAGES if s in stage.values()):
        members = [nid for nid in prompt if stage[nid] == st]
        columns: dict[int, list[str]] = {}
        for nid in members:
            columns.setdefault(depth[nid], []).append(nid)
        col_widths = [max(sizes[n][0] for n in columns[c]) for c in sorted(columns)]
        content_w = sum(col_widths) + COL_GAP * (len(col_widths) - 1)
        text = notes.get(st, "")
        note_w = max(content_w, 420)
        content_w = max(content_w, note_w)
        y0 = top + GROUP_HEADER
        if text:
            nh = note_height(text, note_w)
            note_box = Box(x + GROUP_PAD, y0 + TITLE_H, note_w, nh)
            out.notes.append((st, note_box, text))
            y0 = note_box.y + nh + ROW_GAP
        cx = x + GROUP_PAD
        bottom = y0
        for c, cw in zip(sorted(columns), col_widths):
            # Order a column by where its inputs sit (fewer crossing links), then by id.
            col = sorted(
                columns[c], key=lambda n: (min((row_of.get(p, 1e9) for p in parents[n]), default=-1), _id_key(n))
            )
            y = y0
            for nid in col:
                w, h = sizes[nid]
                out.boxes[nid] = Box(cx, y + TITLE_H, w, h)
                row_of[nid] = y
                y += TITLE_H + h + ROW_GAP
            bottom = max(bottom, y - ROW_GAP)
            cx += cw + COL_GAP
        width = content_w + 2 * GROUP_PAD
        out.groups.append(
            {
                "id": gi + 1,
                "title": STAGE_TITLES[st],
                "bounding": [x, top, width, bottom - top + GROUP_PAD],
                "color": STAGE_COLOURS[st],
                "font_size": 24,
                "flags": {},
            }
        )
        x += width + GROUP_GAP
    # Groups of one height read as one row of panels.
    tallest = max(g["bounding"][3] for g in out.groups)
    for g in out.groups:
        g["bounding"][3] = tallest
    return out
