"""Memory of a capped load: 60 frames out of a 300-frame 512x512 video must cost about 60
frames, never 300. Measured in a fresh subprocess (current RSS from
psutil, peak by polling RSS during the load), so nothing else in the test session blurs the
figures."""

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]
SIDE, TOTAL, CAP = 512, 300, 60
FRAME_BYTES = SIDE * SIDE * 3 * 4  # one float32 RGB frame
MB = 1e6

MEASURE = r"""
import gc, json, sys, threading, time
import psutil
sys.path.insert(0, sys.argv[1])
from ve_testkit.pack import load_pack
load_pack()
from comfyui_videoedit.media.decode import read_video_frames

path, cap, nth = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
read_video_frames(path, frame_load_cap=2)  # warm up: codec, decoder threads, allocator pools
gc.collect()
process = psutil.Process()
rss_before = process.memory_info().rss
# Peak RSS by polling during the load (ru_maxrss is the process's lifetime maximum, which an
# import may already have set higher than anything the load does).
peak = [rss_before]
done = threading.Event()
def poll():
    while not done.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.002)
thread = threading.Thread(target=poll, daemon=True)
thread.start()
loaded = read_video_frames(path, frame_load_cap=cap, select_every_nth=nth)
done.set()
thread.join()
rss_after = process.memory_info().rss
peak_after = max(peak[0], rss_after)
frames = loaded.frames
bars = frames[:, frames.shape[1] // 2, [int((b + 0.5) * frames.shape[2] / 16) for b in range(16)], :].mean(-1) > 0.5
indices = [sum(int(bit) << b for b, bit in enumerate(row)) for row in bars.tolist()]
print(json.dumps({"shape": list(frames.shape), "indices": indices, "rss_before": rss_before,
                  "peak_after": peak_after, "rss_after": rss_after}))
"""


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """300 frames of 512x512 whose frame number is written as 16 bars of 32 px (cheap to encode)."""
    path = tmp_path_factory.mktemp("memory") / "long.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for index in range(TOTAL):
            bits = np.array([(index >> b) & 1 for b in range(16)], np.uint8) * 200 + 28
            row = np.repeat(bits, SIDE // 16)
            rgb = np.ascontiguousarray(np.broadcast_to(row[None, :, None], (SIDE, SIDE, 3)))
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def measure(path: Path, cap: int, nth: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(TESTS_DIR), str(path), str(cap), str(nth)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("nth", [1, 5], ids=["stops-after-cap", "strides-through-all-300"])
def test_capped_load_holds_only_the_kept_frames(long_clip, nth):
    stats = measure(long_clip, CAP, nth)
    assert stats["shape"] == [CAP, SIDE, SIDE, 3]
    assert stats["indices"] == list(range(0, TOTAL, nth))[:CAP]

    kept_budget = CAP * FRAME_BYTES  # 188.7 MB: the float output itself
    all_frames = TOTAL * FRAME_BYTES  # 943.7 MB: what decoding everything would need
    peak_increase = stats["peak_after"] - stats["rss_before"]
    held = stats["rss_after"] - stats["rss_before"]
    print(
        f"\n[memory nth={nth}] 60 float frames {kept_budget / MB:.1f} MB, 300 float frames {all_frames / MB:.1f} MB; "
        f"peak RSS increase {peak_increase / MB:.1f} MB, held after load {held / MB:.1f} MB, "
        f"RSS before {stats['rss_before'] / MB:.1f} MB"
    )
    # The measurement sees the output (so it would see 300 frames too) ...
    assert held > 0.9 * kept_budget
    # ... and the peak stays near the 60-frame budget (the uint8 copies and decoder buffers
    # add 25-60%), far below holding all 300 frames.
    assert peak_increase < 2.0 * kept_budget
    assert peak_increase < 0.5 * all_frames
