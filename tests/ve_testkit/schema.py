"""Checks of a prompt's values against the node schemas a server publishes (``/object_info``)."""

from __future__ import annotations

import math


def _spec(info: dict, name: str):
    for section in ("required", "optional"):
        spec = info.get("input", {}).get(section, {}).get(name)
        if spec is not None:
            return spec, section == "required"
    return None, False


def value_problems(prompt: dict, object_info: dict) -> list[str]:
    """Every input value of an API prompt the schema would not accept: unknown node types and
    inputs, missing required inputs, combo values outside the options, numbers outside min/max
    or of the wrong kind. Links (``[node id, slot]``) are checked only for their target node."""
    problems = []
    for nid, node in prompt.items():
        ct = node.get("class_type")
        info = object_info.get(ct)
        if info is None:
            problems.append(f"node {nid}: unknown node type {ct!r}")
            continue
        where = f"node {nid} ({ct})"
        for section in ("required",):
            for name in info.get("input", {}).get(section, {}):
                if name not in node["inputs"]:
                    problems.append(f"{where}: required input {name!r} missing")
        for name, value in node["inputs"].items():
            spec, _required = _spec(info, name)
            if spec is None:
                problems.append(f"{where}: {name!r} is not an input of the schema")
                continue
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                if str(value[0]) not in prompt:
                    problems.append(f"{where}: {name!r} links to missing node {value[0]!r}")
                continue
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            options = typ if isinstance(typ, list) else opts.get("options") if typ == "COMBO" else None
            if options is not None:
                if value not in options:
                    problems.append(f"{where}: {name}={value!r} is not one of {options[:8]}")
            elif typ == "INT":
                if isinstance(value, bool) or not (
                    isinstance(value, int) or (isinstance(value, float) and value.is_integer())
                ):
                    problems.append(f"{where}: {name}={value!r} is not an integer")
                elif not opts.get("min", -math.inf) <= value <= opts.get("max", math.inf):
                    problems.append(f"{where}: {name}={value!r} outside [{opts.get('min')}, {opts.get('max')}]")
            elif typ == "FLOAT":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    problems.append(f"{where}: {name}={value!r} is not a number")
                elif not opts.get("min", -math.inf) <= value <= opts.get("max", math.inf):
                    problems.append(f"{where}: {name}={value!r} outside [{opts.get('min')}, {opts.get('max')}]")
            elif typ == "BOOLEAN":
                if not isinstance(value, bool):
                    problems.append(f"{where}: {name}={value!r} is not a boolean")
            elif typ == "STRING":
                if not isinstance(value, str):
                    problems.append(f"{where}: {name}={value!r} is not a string")
            else:
                problems.append(f"{where}: {name} of type {typ} needs a link, got {value!r}")
    return problems
