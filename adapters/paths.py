"""Model folders the pack reads from (registered with ComfyUI's ``folder_paths``)."""

import os

import folder_paths

RAFT_FOLDER = "raft"
RAFT_EXTENSIONS = (".pth", ".pt", ".safetensors", ".ckpt", ".bin")


def register_model_folders() -> None:
    """Register ``models/raft`` (users may add paths under ``raft:`` in
    extra_model_paths.yaml). Safe to call repeatedly."""
    default = os.path.join(folder_paths.models_dir, RAFT_FOLDER)
    known = folder_paths.folder_names_and_paths.get(RAFT_FOLDER, ([], set()))[0]
    if default not in known:
        folder_paths.add_model_folder_path(RAFT_FOLDER, default, is_default=True)


def raft_folders() -> list[str]:
    register_model_folders()
    return list(folder_paths.get_folder_paths(RAFT_FOLDER))


def raft_weight_files() -> list[str]:
    """Weight files found in every registered raft folder (relative names)."""
    register_model_folders()
    return [n for n in folder_paths.get_filename_list(RAFT_FOLDER) if n.lower().endswith(RAFT_EXTENSIONS)]


def resolve_raft_weights(arch: str, choice: str) -> str:
    """Full path of the RAFT weights for ``arch``: ``choice`` is a file name from the
    ``raft_weights`` list, or "auto" (the best-known file of that architecture). Never
    downloads: a missing file is a ValueError saying where to put which file."""
    from ..flow.raft_checkpoint import expected_weight_files, pick_raft_weights

    folders = raft_folders()
    name = pick_raft_weights(arch, raft_weight_files()) if choice == "auto" else choice
    path = folder_paths.get_full_path(RAFT_FOLDER, name) if name else None
    if path is None:
        wanted = f"{choice!r}" if choice != "auto" else "any of " + ", ".join(expected_weight_files(arch))
        raise ValueError(
            f"raft_weights: no {arch} weights found. Looked in {folders} for {wanted}. "
            f"Put the file into one of those folders (or a 'raft:' path in extra_model_paths.yaml), "
            f"or use method=dis, which needs no weights."
        )
    return path
