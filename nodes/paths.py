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
