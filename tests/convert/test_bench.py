"""convert.bench: every form timed in interleaved rounds; the int8 / PyTorch ratio reported."""

from __future__ import annotations

import json
import time

import pytest

from convert.bench import INT8, TORCH, Form, main, measure, ratios


def test_measure_interleaves_the_forms_in_rounds_and_enters_each_block():
    log: list[str] = []
    forms = [Form(name, 1, lambda n=name: log.append(n), lambda n=name: log.append(f"enter {n}")) for name in "ab"]
    forms[1].fn = lambda: (log.append("b"), time.sleep(0.002))
    rows = measure(forms, runs=5, warmup=1, rounds=2)
    assert log == ["enter a", "a", "enter b", "b",  # warm-up
                   "enter a", "a", "a", "a", "enter b", "b", "b", "b",  # round 1: 3 of 5 runs
                   "enter a", "a", "a", "enter b", "b", "b"]  # round 2: the other 2
    assert [(r["runtime"], r["runs"]) for r in rows] == [("a", 5), ("b", 5)]
    assert rows[0]["median_ms"] < 1.0 <= 2.0 <= rows[1]["median_ms"]  # each form's own invokes, in ms


def test_ratios_pair_int8_with_pytorch_at_the_same_thread_count():
    rows = [{"runtime": INT8, "threads": 1, "median_ms": 40.0}, {"runtime": TORCH, "threads": 1, "median_ms": 100.0},
            {"runtime": INT8, "threads": 2, "median_ms": 30.0},
            {"runtime": "TFLite fp32", "threads": 2, "median_ms": 9.0}]
    assert ratios(rows) == {"1": 0.4}
    assert ratios([*rows, {"runtime": INT8, "threads": 1, "median_ms": 50.0}]) == {}  # two int8 models: ambiguous


@pytest.mark.slow
def test_bench_times_every_form_of_the_session_model(bundle_dir, checkpoint, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [str(bundle_dir), str(checkpoint), "--runs", "2", "--warmup", "0", "--rounds", "2", "--threads", "1"]
    assert main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    assert sorted(r["runtime"] for r in rows) == sorted([INT8, "TFLite fp32", "onnxruntime fp32", TORCH])
    assert all(r["threads"] == 1 and r["runs"] == 2 and r["median_ms"] > 0 for r in rows)
    assert set(report["int8_over_pytorch"]) == {"1"} and report["int8_over_pytorch"]["1"] > 0
    assert "int8 / PyTorch eager at 1 thread(s)" in capsys.readouterr().out


def test_bench_names_a_missing_checkpoint(tmp_path, capsys):
    assert main([str(tmp_path / "none.safetensors"), "--runs", "1"]) == 2
    assert "none.safetensors" in capsys.readouterr().err


def test_bench_refuses_zero_runs(tmp_path, capsys):
    assert main([str(tmp_path), "--runs", "0"]) == 2  # argparse's refusal, through edge.cli.run_main
    assert "at least 1" in capsys.readouterr().err
