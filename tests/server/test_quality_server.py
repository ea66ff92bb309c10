"""compare_methods through the HTTP API: both edits, both EditQuality reports, the plot PNGs."""

import shutil

from PIL import Image

from ve_testkit.workflows import API_DIR, WORKFLOWS, load_api, prepare_prompt, shrink


def test_compare_methods_reports_both_edits_and_writes_the_plots(server):
    shutil.copyfile(WORKFLOWS / "assets" / "sample.mp4", server.base / "input" / "sample.mp4")
    prompt = shrink(
        prepare_prompt(load_api(API_DIR / "compare_methods.json"), "sample.mp4", None), frames=5, steps=3, width=96
    )
    quality = {nid for nid, node in prompt.items() if node["class_type"] == "VideoEdit_EditQuality"}
    assert len(quality) == 2
    # one of the two gets a (tiny, random) CLIP vision model: the CLIP path runs through the API too
    with_clip = sorted(quality)[0]
    prompt["900"] = {"class_type": "VETest_TinyCLIPVision", "inputs": {"seed": 3}}
    prompt[with_clip]["inputs"]["clip_vision"] = ["900", 0]

    entry = server.run(prompt, timeout=900)
    outputs = entry["outputs"]
    reports = {nid: outputs[nid]["text"][0] for nid in quality}
    labels = {nid: prompt[nid]["inputs"]["label"] for nid in quality}
    for nid, report in reports.items():
        assert report.startswith(f"Edit quality — {labels[nid]}: 5 frames")
        assert "warp error" in report and "SSIM to the source" in report
        assert "flow: given" in report
    assert "CLIP frame consistency (cosine of consecutive frames): edit" in reports[with_clip]
    assert "CLIP text alignment: skipped — no clip connected" in reports[with_clip]
    (other,) = quality - {with_clip}
    assert "CLIP frame consistency: skipped — no clip_vision connected" in reports[other]

    pngs = [f for f in server.output_files(entry) if f.suffix == ".png" and "quality" in f.name]
    assert len(pngs) == 2, pngs
    for f in pngs:
        with Image.open(f) as im:
            assert im.size == (720, 640)
