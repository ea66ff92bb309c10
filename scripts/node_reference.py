"""Print the README's node reference (markdown) from the nodes' own schemas.

.venv/bin/python scripts/node_reference.py > /tmp/nodes.md
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from ve_testkit.host import import_host  # noqa: E402
from ve_testkit.pack import load_pack  # noqa: E402


def _type(io_obj) -> str:
    return getattr(io_obj, "io_type", None) or type(io_obj).__qualname__.split(".")[0].upper()


def main() -> int:
    import_host()
    pack = load_pack()
    nodes = asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())
    by_category: dict[str, list] = {}
    for node in nodes:
        schema = node.GET_SCHEMA()
        by_category.setdefault(schema.category, []).append(schema)
    for category, schemas in by_category.items():
        print(f"### {category}\n")
        for s in schemas:
            ins = ", ".join(f"`{i.id}`" + ("?" if getattr(i, "optional", False) else "") for i in s.inputs)
            outs = ", ".join(f"`{o.display_name or _type(o)}`" for o in s.outputs) or "(output node)"
            print(f"- **{s.display_name}** (`{s.node_id}`): {s.description}  \n  inputs: {ins}; outputs: {outs}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
