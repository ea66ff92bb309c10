"""A real ComfyUI process on 127.0.0.1 with the pack (and the smoke-model pack) installed.

Used by the server tests and by ``scripts/demo.py``. The server runs from a throw-away base
directory (custom_nodes/, input/, output/, temp/, models/) so nothing touches the host tree.
It is always shut down (context manager). Import failures of the pack are fatal: ComfyUI
logs them and carries on, and ``POST /prompt`` accepts partially invalid prompts, so both
the log and ``node_errors`` are checked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from .host import comfy_root
from .pack import PACK_ROOT

SMOKE_PACK = PACK_ROOT / "tests" / "smoke_pack"
IMPORT_FAILURE_MARKERS = ("IMPORT FAILED", "Cannot import", "Error while calling comfy_entrypoint")


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(
        self,
        base_dir: Path,
        with_smoke_models: bool = True,
        extra_args: list[str] | None = None,
        python: str | None = None,
        output_dir: Path | None = None,
    ):
        self.base = Path(base_dir)
        self.output_dir = Path(output_dir) if output_dir else self.base / "output"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.with_smoke_models = with_smoke_models
        self.extra_args = list(extra_args or [])
        self.python = python or sys.executable
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base / "server.log"

    # -- lifecycle -------------------------------------------------------------------------
    def _prepare_base(self) -> None:
        custom = self.base / "custom_nodes"
        for sub in ("input", "output", "temp", "models", "user"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        custom.mkdir(parents=True, exist_ok=True)
        links = {"ComfyUI-VideoEdit": PACK_ROOT}
        if self.with_smoke_models:
            links["ve_smoke_models"] = SMOKE_PACK
        for name, target in links.items():
            link = custom / name
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)

    def start(self, timeout: float = 180.0) -> ComfyServer:
        self._prepare_base()
        root = comfy_root()
        cmd = [
            self.python,
            str(root / "main.py"),
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base),
            "--disable-auto-launch",
            "--database-url",
            "sqlite:///:memory:",
            "--output-directory",
            str(self.output_dir),
            *self.extra_args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, cwd=str(root), stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/object_info/VideoEdit_LoadVideo", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            self.stop()
            raise ServerError(f"ComfyUI did not answer within {timeout}s:\n{self.log_tail()}")
        failures = self.import_failures()
        if failures:
            self.stop()
            raise ServerError("custom node import failed:\n" + "\n".join(failures) + "\n" + self.log_tail())
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- logs ------------------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def import_failures(self) -> list[str]:
        """Log lines reporting a failed import of our packs (core's own optional nodes, e.g. the
        audio ones without torchaudio, fail too and are not ours to judge)."""
        ours = ("custom_nodes/ComfyUI-VideoEdit", "custom_nodes/ve_smoke_models")
        return [
            line
            for line in self.log_text().splitlines()
            if any(m in line for m in IMPORT_FAILURE_MARKERS) and any(o in line for o in ours)
        ]

    # -- API -------------------------------------------------------------------------------
    def get(self, path: str, **kw):
        r = requests.get(f"{self.url}{path}", timeout=kw.pop("timeout", 30), **kw)
        r.raise_for_status()
        return r.json()

    def queue(self, prompt: dict) -> str:
        """POST /prompt; raises on HTTP errors and on any node_errors (ComfyUI runs the valid
        outputs of a partly invalid prompt and still answers 200)."""
        body = {"prompt": prompt, "client_id": uuid.uuid4().hex}
        r = requests.post(f"{self.url}/prompt", json=body, timeout=30)
        if r.status_code != 200:
            raise ServerError(f"/prompt answered {r.status_code}: {r.text}")
        data = r.json()
        if data.get("node_errors"):
            raise ServerError(f"/prompt node_errors: {json.dumps(data['node_errors'], indent=1)}")
        return data["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Poll /history until the prompt finished; returns its history entry. Raises with the
        execution error message when the status is not success."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            entry = hist.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") != "success":
                    raise ServerError(f"prompt failed: {json.dumps(status.get('messages'), indent=1)[:4000]}")
                return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"ComfyUI died:\n{self.log_tail()}")
            time.sleep(0.3)
        raise ServerError(f"prompt {prompt_id} did not finish within {timeout}s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        return self.wait(self.queue(prompt), timeout)

    def output_files(self, entry: dict) -> list[Path]:
        """Every file a finished prompt's output nodes reported (images, gifs, videos)."""
        files = []
        for ui in entry.get("outputs", {}).values():
            for key in ("images", "gifs", "videos", "animated"):
                for item in ui.get(key, []) or []:
                    if isinstance(item, dict) and "filename" in item:
                        folder = {"output": self.output_dir, "temp": self.base / "temp", "input": self.base / "input"}[
                            item.get("type", "output")
                        ]
                        files.append(folder / item.get("subfolder", "") / item["filename"])
        return files


def copy_into_input(server: ComfyServer, src: Path, name: str | None = None) -> str:
    dest = server.base / "input" / (name or Path(src).name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest.name
