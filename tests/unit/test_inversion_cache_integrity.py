"""The disk cache trusts only what it wrote, whole: an edited manifest (files intact) is a
miss that recomputes, with a note for the node's UI; clearing and eviction delete only the
folders the pack wrote (marker file), never a user's folder that happens to sit there."""

import json

import torch

from comfyui_videoedit.inversion import identity
from comfyui_videoedit.inversion.cache import MANIFEST, MARKER, TENSORS, DiskCache


def entry(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x_T": torch.randn(3, 4, 8, 8, generator=g), "sigmas": torch.linspace(3, 0, 5)}


def key_of(i: int) -> str:
    return identity.sha256_hex(str(i))


def _edit_manifest(folder, change):
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_every_entry_carries_the_marker_and_hits_repeatedly(tmp_path):
    cache = DiskCache(tmp_path)
    folder = cache.store(key_of(0), entry(), {"weights_id": "abc"})
    assert (folder / MARKER).read_text() == key_of(0)
    for _ in range(3):  # every hit rewrites last_used: the digest must not cover it
        assert cache.load(key_of(0)) is not None
    assert cache.notes == []


def test_an_edited_meta_is_a_miss_with_a_note_and_the_entry_is_removed(tmp_path):
    cache = DiskCache(tmp_path)
    folder = cache.store(key_of(0), entry(), {"weights_id": "abc", "info": {"steps": 4}})

    def edit(manifest):
        manifest["meta"]["weights_id"] = "someone else's model"

    _edit_manifest(folder, edit)
    assert cache.load(key_of(0)) is None
    (note,) = cache.notes
    assert "edited" in note and "recomputing" in note
    assert not folder.exists()


def test_an_edited_created_time_or_file_list_is_a_miss_too(tmp_path):
    cache = DiskCache(tmp_path)
    for i, change in enumerate([lambda m: m.update(created=1.0), lambda m: m["files"][TENSORS].update(extra=1)]):
        folder = cache.store(key_of(i), entry(i), {})
        _edit_manifest(folder, change)
        assert cache.load(key_of(i)) is None


def _user_folder(root, name):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "my_video.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a cache entry")
    return folder


def test_clear_deletes_only_the_packs_entries(tmp_path):
    cache = DiskCache(tmp_path)
    ours = [cache.store(key_of(i), entry(i), {}) for i in range(2)]
    theirs = _user_folder(tmp_path, "deadbeef" * 4)  # hex-named, like an entry
    also_theirs = _user_folder(tmp_path, ".tmp-0123456789abcdef-mine")
    assert cache.clear() == 2
    assert not any(f.exists() for f in ours)
    assert (theirs / "my_video.mp4").exists() and (also_theirs / "my_video.mp4").exists()


def test_eviction_and_remove_leave_a_users_folder_alone(tmp_path):
    theirs = _user_folder(tmp_path, key_of(99))
    cache = DiskCache(tmp_path, limit_bytes=1)  # every entry is over the limit
    for i in range(3):
        cache.store(key_of(i), entry(i), {})
    assert [k for k, _, _ in cache.entries()] == [key_of(2)]  # the newest is kept
    cache.remove(key_of(99))
    assert cache.load(key_of(99)) is None  # no manifest: a miss, nothing deleted
    assert (theirs / "my_video.mp4").exists()


def test_store_never_replaces_a_folder_it_did_not_write(tmp_path):
    theirs = _user_folder(tmp_path, key_of(5))
    cache = DiskCache(tmp_path)
    try:
        cache.store(key_of(5), entry(), {})
    except OSError as err:
        assert "not written by VideoEdit" in str(err)
    else:
        raise AssertionError("store replaced a user's folder")
    assert (theirs / "my_video.mp4").exists()


def test_entries_of_the_first_format_are_still_recognised_as_ours(tmp_path):
    cache = DiskCache(tmp_path)
    folder = cache.store(key_of(0), entry(), {})
    (folder / MARKER).unlink()
    _edit_manifest(folder, lambda m: (m.update(format=1), m.pop("digest")))
    assert cache.load(key_of(0)) is None  # an older format is recomputed ...
    assert "format 1" in cache.notes[0]
    folder = cache.store(key_of(1), entry(), {})
    (folder / MARKER).unlink()
    _edit_manifest(folder, lambda m: (m.update(format=1), m.pop("digest")))
    assert cache.clear() == 1 and not folder.exists()  # ... and cleared like any entry of ours
