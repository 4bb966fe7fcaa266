"""make demo (tools/demo.sh) survives being run again: finished stages reused, an unfinished training resumed.

The stages are stood in for by a stub "python" that logs its command and makes the files a stage makes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_STUB = """#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
module=$2; shift 2
out=""; prev=""
for a in "$@"; do [[ "$prev" == "--out" ]] && out=$a; prev=$a; done
case "$module" in
  train.phantoms) mkdir -p "$out/images" ;;
  train) mkdir -p "$out"; touch "$out/last_state.pt"; [[ -f "$STUB_FAIL" ]] && exit 1; touch "$out/best.safetensors" ;;
  convert|convert.oddballs) mkdir -p "$out" ;;
esac
exit 0
"""


def _demo(tmp_path: Path, fail_train: bool = False) -> tuple[int, str, list[str]]:
    stub, log, fail = tmp_path / "python", tmp_path / "calls.log", tmp_path / "fail"
    stub.write_text(_STUB)
    stub.chmod(0o755)
    fail.touch() if fail_train else fail.unlink(missing_ok=True)
    log.unlink(missing_ok=True)
    env = {**os.environ, "STUB_LOG": str(log), "STUB_FAIL": str(fail)}
    proc = subprocess.run(["bash", "tools/demo.sh", str(stub), str(tmp_path / "demo")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, proc.stdout + proc.stderr, log.read_text().splitlines() if log.exists() else []


def _modules(calls: list[str]) -> list[str]:
    return [c.split()[1] + (" --resume" if "--resume" in c else "") for c in calls]


def test_demo_runs_again_reusing_and_resuming(tmp_path):
    code, _, calls = _demo(tmp_path, fail_train=True)  # stopped during training
    assert code != 0 and _modules(calls) == ["train.phantoms", "train.phantoms", "convert.oddballs", "train"]
    code, out, calls = _demo(tmp_path)
    assert code == 0 and _modules(calls) == ["train --resume", "convert", "edge.scan"]
    assert "reused: phantoms" in out and "resuming the unfinished training" in out
    code, out, calls = _demo(tmp_path)  # everything finished: only the scan runs (it skips stored films)
    assert code == 0 and _modules(calls) == ["edge.scan"]
    assert all(f"reused: {stage}" in out for stage in ("phantoms", "train", "convert"))
    assert "make serve" in out.splitlines()[-2]


def test_demo_with_changed_inputs_redoes_the_stage(tmp_path):
    assert _demo(tmp_path)[0] == 0
    for name in (".train.done", ".train.started"):  # as a run of another recipe (other code or options) left them
        (tmp_path / "demo" / name).write_text("an older recipe\n")
    code, out, calls = _demo(tmp_path)
    assert code == 0 and _modules(calls)[0] == "train"  # trained afresh, not resumed nor reused
