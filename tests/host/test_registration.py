"""The pack registers through ComfyUI's V3 entry point with well-formed schemas."""

import asyncio


def test_entrypoint_lists_well_formed_nodes(host):
    from comfy_api.latest import ComfyExtension

    import comfyui_videoedit as pack

    ext = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(ext, ComfyExtension)
    nodes = asyncio.run(ext.get_node_list())
    ids = [n.GET_SCHEMA().node_id for n in nodes]
    assert len(ids) == len(set(ids))
    for node in nodes:
        schema = node.GET_SCHEMA()
        assert schema.node_id.startswith("VideoEdit_"), schema.node_id
        assert schema.display_name and schema.category.startswith("VideoEdit")
        assert schema.description, f"{schema.node_id}: no description"
        for inp in schema.inputs:
            assert inp.tooltip, f"{schema.node_id}.{inp.id}: no tooltip"
        info = node.GET_NODE_INFO_V1()
        assert info["name"] == schema.node_id


def test_raft_model_folder_registered(host):
    import comfyui_videoedit.adapters.paths as paths

    paths.register_model_folders()
    paths.register_model_folders()  # idempotent
    folders = host.folder_paths.get_folder_paths("raft")
    assert sum(f.endswith("raft") for f in folders) >= 1
    assert len(folders) == len(set(folders))


def test_readme_documents_every_node(host):
    import comfyui_videoedit as pack
    from ve_testkit.pack import PACK_ROOT

    readme = (PACK_ROOT / "README.md").read_text()
    nodes = asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())
    missing = [n.GET_SCHEMA().node_id for n in nodes if n.GET_SCHEMA().node_id not in readme]
    assert not missing, f"README lacks {missing}: regenerate with scripts/node_reference.py"
