"""Server tier: one real ComfyUI process (127.0.0.1, free port) per test module, with the pack
and the tiny smoke-model pack installed in a throw-away base directory."""

import pytest

from ve_testkit.server import ComfyServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ComfyServer(tmp_path_factory.mktemp("comfy_server")) as s:
        yield s
