"""The real ComfyUI frontend in headless Chromium (Playwright), for the browser tier.

Chromium is Debian's (``/usr/bin/chromium``, or ``VE_CHROMIUM``), never a browser Playwright
downloads. The page is the frontend a ComfyServer serves (``comfyui-frontend-package``, installed
with ComfyUI's requirements); workflows are loaded through the app itself
(``app.loadGraphData``), and what the app then holds is read back: node types it knows, links,
widgets, the prompt it would queue (``app.graphToPrompt``), node and group boxes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import requests

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 2560, "height": 1280}

# Settings a person who has used ComfyUI before has: no first-run template browser, no minimap;
# and text drawn at every zoom (the default draws bare boxes below ~60 %, so a whole workflow
# fitted to the view would show no titles in the screenshot).
FRONTEND_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
}
# The "Nodes 2.0" banner is dismissed in local storage, not in the settings.
INIT_SCRIPT = "try { localStorage.setItem('vueNodesBannerDismissed', 'true'); } catch (e) {}"


DEBIAN_CHROMIUM = "/usr/bin/chromium"


def chromium_path() -> str | None:
    """Debian's Chromium, or ``VE_CHROMIUM``; None when there is none."""
    for cand in (os.environ.get("VE_CHROMIUM"), DEBIAN_CHROMIUM, shutil.which("chromium")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def skip_reason() -> str | None:
    """Why the browser tier cannot run here (None when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "browser tier: the 'playwright' package is missing (pip install -r requirements-dev.txt)"
    if chromium_path() is None:
        return (
            "browser tier: no Chromium at /usr/bin/chromium (apt-get install chromium, or set VE_CHROMIUM); "
            "Playwright's own browser downloads are not used"
        )
    return None


# One JavaScript function does the load and reads everything back, so the page is inspected in
# the state the load left it in.
LOAD_AND_INSPECT = r"""
async ([wf, name]) => {
  const app = window.app;
  await app.loadGraphData(wf, true, true, name);
  const g = app.graph;
  const registered = LiteGraph.registered_node_types;
  const getLink = (id) => (g.links instanceof Map ? g.links.get(id) : g.links[id]);
  const nodes = g._nodes.map((n) => {
    const size = n.computeSize();
    return {
      id: n.id, type: n.type, title: n.title, known: !!registered[n.type], has_errors: !!n.has_errors,
      pos: [n.pos[0], n.pos[1]], size: [n.size[0], n.size[1]], min_size: [size[0], size[1]],
      widgets: (n.widgets || []).map((w) => ({name: w.name, type: w.type, value: w.value,
                                              options: w.options && Array.isArray(w.options.values)
                                                ? w.options.values : null})),
      inputs: (n.inputs || []).map((i, slot) => {
        if (i.link == null) return {name: i.name, slot, link: null};
        const l = getLink(i.link);
        if (!l) return {name: i.name, slot, link: i.link, dangling: true};
        const src = g.getNodeById(l.origin_id);
        const out = src && src.outputs ? src.outputs[l.origin_slot] : null;
        return {name: i.name, slot, link: i.link, origin: l.origin_id, origin_slot: l.origin_slot,
                target: l.target_id, target_slot: l.target_slot, src_type: out ? out.type : null,
                dst_type: i.type, listed: !!(out && out.links && out.links.includes(i.link)),
                valid: !!out && LiteGraph.isValidConnection(out.type, i.type)};
      }),
    };
  });
  const groups = (g._groups || g.groups || []).map((gr) => ({title: gr.title,
    bounding: Array.from(gr._bounding || gr.bounding)}));
  const linkCount = g.links instanceof Map ? g.links.size : Object.keys(g.links).length;
  const prompt = await app.graphToPrompt();
  return {nodes, groups, link_count: linkCount, prompt: prompt.output};
}
"""

FIT_VIEW = r"""
async () => {
  const app = window.app;
  const cmd = app.extensionManager && app.extensionManager.command;
  if (cmd && cmd.execute) { await cmd.execute('Comfy.Canvas.FitView'); }
  else { app.canvas.ds.reset(); }
  app.canvas.setDirty(true, true);
  app.canvas.draw(true, true);
}
"""

# The screen rectangle of the graph (after the fit, which may animate).
GRAPH_CLIP = r"""
() => {
  const app = window.app;
  // The screen rectangle of every group and node, with a margin, inside the viewport.
  const ds = app.canvas.ds, g = app.graph;
  const boxes = (g._groups || []).map((gr) => Array.from(gr._bounding || gr.bounding))
    .concat(g._nodes.map((n) => [n.pos[0], n.pos[1] - 30, n.size[0], n.size[1] + 30]));
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const [x, y, w, h] of boxes) { x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h); }
  const rect = app.canvas.canvas.getBoundingClientRect();
  const sx = (v) => rect.left + (v + ds.offset[0]) * ds.scale, sy = (v) => rect.top + (v + ds.offset[1]) * ds.scale;
  const left = Math.max(0, sx(x0) - 16), top = Math.max(0, sy(y0) - 16);
  const right = Math.min(window.innerWidth, sx(x1) + 16), bottom = Math.min(window.innerHeight, sy(y1) + 16);
  return {x: left, y: top, width: Math.max(1, right - left), height: Math.max(1, bottom - top)};
}
"""


class Frontend:
    """One Chromium page on a ComfyServer's frontend. Use as a context manager."""

    def __init__(self, server, viewport: dict | None = None):
        self.server = server
        self.viewport = viewport or VIEWPORT
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []

    def __enter__(self) -> Frontend:
        from playwright.sync_api import sync_playwright

        r = requests.post(f"{self.server.url}/settings", json=FRONTEND_SETTINGS, timeout=30)
        r.raise_for_status()
        self._user_data = tempfile.mkdtemp(prefix="ve_chromium_")
        self._pw = sync_playwright().start()
        try:
            self.context = self._pw.chromium.launch_persistent_context(
                self._user_data,
                executable_path=chromium_path(),
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport=self.viewport,
            )
            self.context.add_init_script(INIT_SCRIPT)
            self.page = self.context.new_page()
            self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
            self.page.on("console", self._on_console)
            self.page.goto(self.server.url, wait_until="domcontentloaded", timeout=120_000)
            self.page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=180_000)
            # The app is ready once the node definitions from /object_info are registered.
            self.page.wait_for_function(
                "() => window.LiteGraph && !!LiteGraph.registered_node_types['VideoEdit_LoadVideo']", timeout=120_000
            )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _on_console(self, msg) -> None:
        # Requests to hosts this machine cannot reach (release notes, fonts) are not the pack's.
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            self.console_errors.append(msg.text)

    def __exit__(self, *exc) -> None:
        for closer in (getattr(self, "context", None),):
            if closer is not None:
                try:
                    closer.close()
                except Exception:  # noqa: BLE001 - closing after a failure must not hide it
                    pass
        if getattr(self, "_pw", None) is not None:
            self._pw.stop()
            self._pw = None
        shutil.rmtree(getattr(self, "_user_data", ""), ignore_errors=True)

    def load(self, workflow: dict, name: str) -> dict:
        """Load a UI workflow through the app; what the app holds afterwards (see LOAD_AND_INSPECT)."""
        self.page.keyboard.press("Escape")  # no dialog left over from the previous load
        return self.page.evaluate(LOAD_AND_INSPECT, [workflow, name])

    def open_dialogs(self) -> list[str]:
        """Header text of every dialog on screen (templates, missing nodes, errors)."""
        return self.page.evaluate("""() => Array.from(document.querySelectorAll('.p-dialog'))
            .filter((d) => d.offsetParent !== null)
            .map((d) => (d.innerText || 'dialog').trim().split('\\n')[0].slice(0, 120))""")

    def close_dialogs(self) -> None:
        """Escape, then the close button of any dialog still open (the template browser ignores
        Escape)."""
        self.page.keyboard.press("Escape")
        self.page.evaluate("""() => document.querySelectorAll('.p-dialog').forEach((d) => {
            if (d.offsetParent === null) return;
            const icon = d.querySelector('button .pi-times, button .icon-\\[lucide--x\\]');
            const b = d.querySelector('.p-dialog-close-button') || (icon && icon.closest('button'));
            if (b) b.click();
        })""")
        self.page.wait_for_timeout(300)

    def screenshot(self, path: Path) -> Path:
        """Close dialogs, fit the graph to the view, save a PNG of the part the graph covers."""
        self.close_dialogs()
        self.page.evaluate(FIT_VIEW)
        self.page.wait_for_timeout(600)
        clip = self.page.evaluate(GRAPH_CLIP)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), clip=clip)
        return path
