"""The benchmark harness itself: ratio spread, the busy-core process, the FLOP model's
formulas on hand-made shapes, and the ``make bench-gpu`` script's CPU path end to end (the tiny
UNet at 64², 2 frames, in a subprocess: the unit tier never imports the host itself)."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _bench(module: str):
    """Import ``bench.<module>`` from the pack root without putting the root on sys.path (its
    ``nodes/`` and ``tests/`` would shadow ComfyUI's)."""
    if "bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "bench", ROOT / "bench" / "__init__.py", submodule_search_locations=[str(ROOT / "bench")]
        )
        pkg = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = pkg
        spec.loader.exec_module(pkg)
    return importlib.import_module(f"bench.{module}")


def test_ratio_is_the_median_quotient_and_the_spread_the_widest_pairing():
    ratio_with_spread = _bench("timing").ratio_with_spread
    r, lo, hi = ratio_with_spread([2.0, 3.0, 2.5], [1.0, 1.25, 1.0])
    assert r == pytest.approx(2.5 / 1.0)
    assert lo == pytest.approx(2.0 / 1.25) and hi == pytest.approx(3.0 / 1.0)


def test_measure_times_every_repeat_after_one_warm_up():
    timing = _bench("timing")
    calls = []
    tm = timing.measure(
        lambda: calls.append(1), torch.device("cpu"), repeats=3, warm_up_fn=lambda r: calls.append("warm")
    )
    assert calls == ["warm", 1, 1, 1]
    assert len(tm.wall) == len(tm.cpu) == 3 and all(t >= 0 for t in tm.wall + tm.cpu)
    assert tm.metric("cpu") is tm.cpu and tm.metric("cuda") is tm.wall


def test_interleaved_repeats_alternate_the_cases_after_all_warm_ups():
    timing = _bench("timing")
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in "ABC"}
    tm = timing.measure_interleaved(
        runners,
        torch.device("cpu"),
        repeats=3,
        warm_up={"B": False},
        warm_up_fns={"C": lambda r: calls.append("warm C")},
    )
    # warm-ups first (B skipped, C's replaced), then one timed call of each case per round
    assert calls == ["A", "warm C"] + ["A", "B", "C"] * 3
    assert list(tm) == ["A", "B", "C"] and all(len(t.cpu) == len(t.wall) == 3 for t in tm.values())


def test_passive_wait_policy_only_before_torch_and_never_over_the_users_choice():
    policy = _bench("__main__").passive_wait_policy
    env = {}
    assert policy(env, modules={}) == "PASSIVE" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert policy(env, modules={}) == "ACTIVE" and env == {"OMP_WAIT_POLICY": "ACTIVE"}
    env = {}  # torch (libgomp) already loaded: too late to matter, so the environment stays as it is
    assert "imported before" in policy(env, modules={"torch": torch}) and env == {}


def test_measure_counts_cpu_time_of_every_thread():
    import threading

    timing = _bench("timing")

    def spin_two_threads():
        def spin():  # until this thread itself has used 0.05 s of CPU, however busy the machine
            start = time.thread_time()
            while time.thread_time() - start < 0.05:
                pass

        threads = [threading.Thread(target=spin) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    tm = timing.measure(spin_two_threads, torch.device("cpu"), repeats=1, warm_up=False)
    # both threads' CPU time is counted, not only the calling thread's (which mostly waits)
    assert tm.cpu[0] >= 0.1


def test_busy_core_starts_and_stops_its_own_process():
    busy_core = _bench("timing").busy_core
    with busy_core() as proc:
        assert proc.poll() is None
        assert proc.args[1:] == ["-c", "while True: pass"] and psutil.pid_exists(proc.pid)
    assert proc.poll() is not None
    with busy_core(False) as none:
        assert none is None


def _shapes(row=1e5, tokens=16, inner=4):
    """One self-attention layer of ``tokens`` tokens (core 4·N²·inner FLOPs) in a ``row``-FLOP UNet."""
    flops = _bench("flops")
    layer = flops.SelfAttention("a.attn1", tokens, inner, 1)
    assert layer.core_flops == 4.0 * tokens * tokens * inner
    return flops.UNetShapes(row_flops=row, self_layers=[layer])


def test_model_formulas():
    model = _bench("model")
    shapes = _shapes()
    u, a = shapes.row_flops, shapes.self_core_flops
    ctx = SimpleNamespace(steps=2, latent=torch.zeros(8, 4, 4, 4))
    plain = model.plain(shapes, ctx)
    assert plain == 2 * 2 * 8 * u
    assert model.inversion(shapes, ctx) / model.plain(shapes, ctx, rows_per_frame=1) == 1.0
    assert model.p2p(shapes, ctx) / plain == 1.5
    # 8 frames, stride 4: keyframes 0 and 4, one extra frame of keys per row
    assert model.extended_attention(shapes, ctx) == 2 * 2 * 8 * (u + a)
    # TokenFlow at 8 frames, window 8: 1 keyframe → (3 + 24) rows, 24 of them without their
    # attention core, 8 NN fields against one keyframe (A/2 each)
    assert model.tokenflow(shapes, ctx) == 2 * (27 * u - 24 * a + 8 * a / 2)
    assert model.tokenflow(_shapes(tokens=0), ctx) / plain == pytest.approx(27 / 16)
    # FLATTEN dense: every row reads 8 frames of keys, + the flow step (≤ one token per frame)
    traj = 4.0 * 16 * 8 * 4
    assert model.flatten(shapes, ctx) == 2 * 2 * 8 * (u + 7 * a + traj)
    bounded = model.flatten(shapes, ctx, "bounded")
    assert model.flatten(shapes, ctx, "dense", frames=16) > 2 * model.flatten(shapes, ctx)  # quadratic
    assert bounded < model.flatten(shapes, ctx)
    # bounded: linear in frames once the anchors are capped (4 of them from 16 frames on), at a
    # resolution where the flow step (≤ F tokens per token) is small beside N² attention
    wide = _shapes(row=1e9, tokens=1024)
    b32, b64 = (model.flatten(wide, ctx, "bounded", frames=n) for n in (32, 64))
    assert b64 / b32 == pytest.approx(2.0, rel=0.02)


def test_flop_counter_counts_cpu_sdpa():
    counted_flops = _bench("flops").counted_flops
    q = torch.randn(2, 3, 16, 8)
    assert counted_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)) == 4 * 2 * 3 * 16 * 16 * 8


def test_gpu_preset_and_explicit_flags():
    main = _bench("__main__")
    a = main.parse_args(["--gpu"])
    assert (a.device, a.size, a.frames, a.steps, a.timed_steps, a.repeats) == ("cuda", 512, 16, 50, 3, 1)
    assert a.names == main.GPU_CASES.split(",")
    a = main.parse_args(["--gpu", "--device", "cpu", "--size=64", "--frames", "2"])
    assert (a.device, a.size, a.frames, a.steps) == ("cpu", 64, 2, 50)
    assert main.parse_args(["--cases", "tokenflow_f16"]).names == ["plain_cfg", "tokenflow", "tokenflow_f16"]
    with pytest.raises(SystemExit):
        main.parse_args(["--cases", "no_such_case"])


# a baseline, a case against another baseline, a multi-pass method, an attention method and a
# whole-schedule case: every column and both step counts (all GPU cases: `make bench-gpu`)
SMOKE_CASES = "plain_cfg,plain_cfg1,tokenflow,flatten_dense,inversion"


@pytest.mark.slow
def test_gpu_table_script_cpu_path(tmp_path):
    """``make bench-gpu``'s command with the CPU overrides (tiny UNet, 64², 2 frames, one of 2
    steps timed): the cases run, with a ratio and its spread, the model and the counted FLOPs,
    and the JSON holds them."""
    out = tmp_path / "gpu.json"
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "--gpu",
        "--device",
        "cpu",
        "--size",
        "64",
        "--frames",
        "2",
        "--timed-steps",
        "1",
        "--steps",
        "2",
        "--unet",
        "tiny",
        "--model",
        "--cases",
        SMOKE_CASES,
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["cases"]) == SMOKE_CASES.split(",")
    for name, row in result["cases"].items():
        assert len(row["cpu"]) == 1 and row["step_cpu"] > 0, name
        assert row["counted_flops_per_step"] > 0, name
        if name != "plain_cfg":
            assert row["ratio"] > 0 and row["ratio_lo"] <= row["ratio"] <= row["ratio_hi"], name
    assert result["cases"]["plain_cfg"]["steps_run"] == 1 and result["cases"]["inversion"]["steps_run"] == 2
    assert result["cases"]["plain_cfg1"]["model_ratio"] == pytest.approx(0.5)
    assert result["cases"]["flatten_dense"]["model_ratio"] > 1
    assert result["cases"]["inversion"]["model_ratio"] == pytest.approx(1.0)
    assert "meas/mod" in proc.stdout and "flatten_dense" in proc.stdout
    import os  # `python -m bench` sets PASSIVE before torch loads unless the environment chose one

    assert result["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
