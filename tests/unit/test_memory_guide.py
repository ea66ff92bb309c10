"""The README's GPU memory guide is the output of scripts/memory_guide.py (computed from shapes)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import memory_guide  # noqa: E402


def test_readme_tables_are_the_scripts_output():
    readme = (ROOT / "README.md").read_text()
    for size in (512, 768):
        assert memory_guide.table(size) in readme, f"README's {size}² table is stale: run scripts/memory_guide.py"


def test_peaks_follow_the_shapes():
    gib = memory_guide.GIB
    small, large = memory_guide.peaks(8), memory_guide.peaks(64)
    rerender = "Rerender keyframes (one keyframe at a time)"
    assert small[rerender] == large[rerender], "Rerender renders one keyframe at a time"
    plain = "plain CFG sampling of the clip in one batch"
    # 56 more frames × 2 CFG rows × ComfyUI's 80 MiB per 64² row (SD1.5, SDPA)
    assert abs((large[plain] - small[plain]) - 56 * 2 * 4096 * 2 * 0.01 * 1024**2) < 1
    assert 1.6 * gib < small[rerender] - memory_guide.OVERHEAD < 2.0 * gib  # UNet weights + two rows
