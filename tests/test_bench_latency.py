"""bench/bench_latency.py's pooling of interleaved rounds (the benchmark itself is not a test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_latency.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rounds_pool_their_samples_and_keep_the_highest_memory():
    bench = _bench()
    rounds = [
        {"median_ms": 10.0, "times_ms": [9.0, 10.0, 11.0], "peak_rss_mb": 100.0, "model_mem_mb": 40.0, "weights": "x"},
        {"median_ms": 30.0, "times_ms": [29.0, 30.0, 31.0, 32.0], "peak_rss_mb": 120.0, "model_mem_mb": 35.0, "weights": "x"},
    ]
    row = bench.pooled(rounds)
    assert row["median_ms"] == 29.0 and row["iterations"] == 7  # the median of all seven samples
    assert row["p90_ms"] == pytest.approx(31.4)
    assert row["peak_rss_mb"] == 120.0 and row["model_mem_mb"] == 40.0
    assert row["round_ms"] == [10.0, 30.0] and row["weights"] == "x"


def test_time_call_returns_its_samples():
    bench = _bench()
    timing = bench.time_call(lambda: None, min_iterations=4, max_seconds=0.0, warmup=0)
    assert timing["iterations"] == len(timing["times_ms"]) == 4


def test_each_model_is_compared_with_the_baselines_at_its_own_range():
    bench = _bench()
    # The shipped default covers 192 / 1.49 = 129 input px; enlarging the pair by 1.5 leaves 86 of them; the
    # fast variant (working scale 1.2) 160 and the refined one (1.0) 192.
    assert bench.model_max_disparity("m2s_rt") == 129 and bench.sgbm_range("m2s_rt") == 144
    assert bench.model_max_disparity("m2s_rt@1.5") == 86 and bench.sgbm_range("m2s_rt@1.5") == 96
    assert bench.sgbm_range("m2s_rt_fast") == 160 and bench.sgbm_range("m2s_rt_refined") == 192
    rows = [
        {"backend": "sgbm", "num_disparities": 144, "median_ms": 50.0},
        {"backend": "sgbm", "num_disparities": 192, "median_ms": 70.0},
        {"backend": "sgbm_sip", "num_disparities": 144, "median_ms": 90.0},
    ]
    assert bench.baseline_row(rows, "sgbm", 144)["median_ms"] == 50.0
    assert bench.baseline_row(rows, "sgbm", 192)["median_ms"] == 70.0
    assert bench.baseline_row(rows, "sgbm_sip", 192) is None


def test_paired_summary_reports_the_ratio_of_medians_and_the_pair_quartiles():
    bench = _bench()
    summary = bench.paired_summary([500.0, 400.0, 450.0, 600.0], [100.0, 100.0, 90.0, 100.0])
    assert summary["ratio"] == pytest.approx(475.0 / 100.0)
    assert summary["pairs"] == 4 and summary["model_median_ms"] == 475.0 and summary["sgbm_median_ms"] == 100.0
    # Per-pair ratios 5.0, 4.0, 5.0, 6.0.
    assert summary["pair_q1"] == pytest.approx(4.75) and summary["pair_q3"] == pytest.approx(5.25)


def test_model_specs_carry_the_runner_options():
    bench = _bench()
    assert bench.parse_model("m2s_rt") == ("m2s_rt", 1.0, False, True)
    assert bench.parse_model("m2s_rt+raw") == ("m2s_rt", 1.0, False, False)
    assert bench.parse_model("m2s_rt@1.5+lr") == ("m2s_rt", 1.5, True, True)
    assert bench.parse_model("m2s_rt@1.25+lr+raw") == ("m2s_rt", 1.25, True, False)
    assert bench.parse_model("m2s_rt+raw+lr") == ("m2s_rt", 1.0, True, False)
    with pytest.raises(SystemExit, match="NAME"):
        bench.parse_model("m2s_rt@9+raw")


def test_measured_processes_get_the_stereo_nodes_malloc_thresholds(monkeypatch):
    bench = _bench()
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    env, text = bench.allocator_env("node")
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(32 << 20) and env["MALLOC_TRIM_THRESHOLD_"] == str(64 << 20)
    assert "stereo node" in text
    env, text = bench.allocator_env("default")
    assert "MALLOC_MMAP_THRESHOLD_" not in env and text == "glibc defaults"
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1")
    env, text = bench.allocator_env("node")
    assert env["MALLOC_TRIM_THRESHOLD_"] == "1" and "MALLOC_MMAP_THRESHOLD_" not in env and "environment" in text
