"""Edge TPU step: the compiler run (against a stand-in script) and the offline compatibility report."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from convert.edgetpu import SUPPORTED, compile_model, op_report, parse_compiler_output
from convert.errors import ConvertError

SUMMARY = """Edge TPU Compiler version 16.0.384591198
Model compiled successfully in 812 ms.

Input model: {model}
Input size: 7.06MiB
Output model: {out}
Output size: 7.32MiB
On-chip memory used for caching model parameters: 6.90MiB
On-chip memory remaining for caching model parameters: 7.25KiB
Off-chip memory used for streaming uncached model parameters: 128.00KiB
Number of Edge TPU subgraphs: 1
Total number of operations: 277
Operation log: {log}
"""

STAND_IN = r'''#!{python}
import json, pathlib, sys
args = sys.argv[1:]
pathlib.Path({record!r}).write_text(json.dumps(args))
if {exit_code}:
    print("Internal compiler error. Aborting!", file=sys.stderr)
    sys.exit({exit_code})
out = pathlib.Path(args[args.index("-o") + 1])
model = pathlib.Path(args[-1])
compiled = out / (model.stem + "_edgetpu.tflite")
compiled.write_bytes(b"EDGETPU" + model.read_bytes())
(out / (model.stem + "_edgetpu.log")).write_text("Operator Count Status\nCONV_2D 120 Mapped to Edge TPU\n")
print({summary!r}.format(model=model.name, out=compiled.name, log=model.stem + "_edgetpu.log"))
'''


def _install_stand_in(bin_dir: Path, record: Path, exit_code: int = 0) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "edgetpu_compiler"
    script.write_text(STAND_IN.format(python=sys.executable, record=str(record), exit_code=exit_code,
                                      summary=SUMMARY))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_compiler_runs_with_an_argument_list_and_its_summary_is_parsed(tmp_path, monkeypatch):
    record = tmp_path / "args.json"
    _install_stand_in(tmp_path / "bin", record)
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    model = tmp_path / "model int8.tflite"  # a space: passed as one argument, no shell
    model.write_bytes(b"TFL3 fake")
    result = compile_model(model, tmp_path / "out")
    assert json.loads(record.read_text()) == ["-s", "-o", str(tmp_path / "out"), str(model)]
    assert result["model"].read_bytes() == b"EDGETPU" + b"TFL3 fake"
    assert result["tpu_ops"] == 277 and result["cpu_ops"] == 0 and result["subgraphs"] == 1
    assert result["on_chip_used"] == "6.90MiB" and result["off_chip_used"] == "128.00KiB"
    assert "Edge TPU Compiler version" in (tmp_path / "out" / "edgetpu_compiler.log").read_text()
    assert "CONV_2D" in result["compiler_log"]


def test_a_failing_compiler_is_an_error_with_its_output(tmp_path, monkeypatch):
    _install_stand_in(tmp_path / "bin", tmp_path / "args.json", exit_code=3)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    with pytest.raises(ConvertError, match=r"failed \(exit 3\) on m.tflite: Internal compiler error"):
        compile_model(model, tmp_path / "out")


def test_no_compiler_on_path_returns_none(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert compile_model(tmp_path / "m.tflite", tmp_path / "out") is None


def test_parse_counts_cpu_ops_when_some_are_not_mapped():
    text = SUMMARY + ("Number of operations that will run on Edge TPU: 275\n"
                      "Number of operations that will run on CPU: 2\n")
    out = parse_compiler_output(text)
    assert (out["tpu_ops"], out["cpu_ops"], out["total_ops"]) == (275, 2, 277)


def _interpreter_ops(path: Path) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return [op["op_name"] for op in interp._get_ops_details()]


def test_report_lists_every_op_of_the_int8_model(tiny_tflite):
    report = op_report(tiny_tflite["int8"])
    ops = _interpreter_ops(tiny_tflite["int8"])
    assert [row["op"] for row in report["table"]] == ops
    assert report["ops"] == len(ops) and sum(report["op_counts"].values()) == len(ops)
    for row in report["table"]:
        assert row["inputs"] and row["outputs"]
        assert all(t["dtype"] in ("int8", "uint8", "int32") for t in row["inputs"] + row["outputs"])
    assert "PADV2" not in ops and "CAST" not in ops
    assert report["all_supported"], report["first_cpu_fallback"]
    assert all(op in SUPPORTED for op in ops)


def test_report_finds_the_first_cpu_fallback_of_a_float_model(tiny_tflite):
    report = op_report(tiny_tflite["fp32"])
    first = report["first_cpu_fallback"]
    assert not report["all_supported"]
    assert first["index"] == 0 and first["op"] == "CAST"
    assert first["ops_on_cpu_from_here"] == report["ops"]
    assert report["table"][0]["edgetpu"] is False
