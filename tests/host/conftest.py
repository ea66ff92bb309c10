"""Host tier: the real ComfyUI imported in-process, tiny models from its own classes."""

import pytest
import torch

from ve_testkit.host import import_host


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    return import_host(str(tmp_path_factory.mktemp("comfy_base")))


@pytest.fixture(scope="session")
def pack_nodes(host):
    """The pack's node modules, imported as ComfyUI would (after the host)."""
    import comfyui_videoedit.nodes as pack_nodes

    return pack_nodes


@pytest.fixture(scope="session")
def tiny_model(host):
    from ve_testkit.models import build_tiny_model

    return build_tiny_model()


@pytest.fixture(scope="session")
def tiny_clip(host):
    from ve_testkit.models import build_tiny_clip

    return build_tiny_clip()


@pytest.fixture(scope="session")
def tiny_vae(host):
    from ve_testkit.models import build_tiny_vae

    return build_tiny_vae()


@pytest.fixture
def inference_mode():
    """Nodes run under torch.inference_mode() in ComfyUI's executor; tests do the same."""
    with torch.inference_mode():
        yield
