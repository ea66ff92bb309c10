"""Test tiers: tests/unit (pure torch, never imports the host), tests/host (the real
ComfyUI in-process with tiny models), tests/server (a real ComfyUI process on 127.0.0.1).

The pack root holds ``nodes/`` and ``tests/`` which collide with ComfyUI's own top-level
``nodes.py`` and ``tests/``: the root is never put on sys.path. The pack is loaded as the
package ``comfyui_videoedit`` (as ComfyUI does, from its ``__init__.py``) and every internal
import is relative. Shared helpers live in ``tests/ve_testkit``.
"""

import os
import sys
from pathlib import Path

# The tiny test models are dominated by per-op overhead; one OpenMP thread per process avoids
# oversubscription (server subprocesses inherit it). Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from ve_testkit.pack import load_pack  # noqa: E402

load_pack()
