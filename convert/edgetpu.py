"""Edge TPU: compile with ``edgetpu_compiler`` when it is on PATH, and always an offline report.

The compiler (x86-64 Linux only) runs as an argument list, ``edgetpu_compiler -s -o OUT model``;
its exit status is checked, its output kept (``edgetpu_compiler.log`` in the report, and the
compiler's own ``*_edgetpu.log``), and the summary parsed: operations mapped to the TPU / left to
the CPU, on-chip and off-chip parameter memory, subgraphs.

The offline compatibility report reads the int8 .tflite itself: every op with its type, tensor
dtypes and shapes, whether the Edge TPU supports it (``SUPPORTED``, from Coral's
"supported operations" table, with the checks that can be made from the file: 8-bit activation
tensors, at most 3 dimensions larger than 1, no batch-dimension MEAN/PAD), and the first op at
which the compiler would hand the rest of the graph to the CPU.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from convert.errors import ConvertError

__all__ = ["COMPILER", "SUPPORTED", "compile_model", "op_report", "parse_compiler_output"]

COMPILER = "edgetpu_compiler"

# Coral's supported-operations table (coral.ai/docs/edgetpu/models-intro): op -> known limitation.
SUPPORTED = {
    "ADD": "", "AVERAGE_POOL_2D": "no fused activation", "CONCATENATION": "no fused activation",
    "CONV_2D": "same dilation in x and y", "DEPTHWISE_CONV_2D": "same dilation in x and y",
    "EXPAND_DIMS": "", "FULLY_CONNECTED": "default weight format; 1-D output", "L2_NORMALIZATION": "",
    "LOGISTIC": "", "LSTM": "unidirectional only", "MAXIMUM": "", "MAX_POOL_2D": "no fused activation",
    "MEAN": "no reduction over the batch dimension", "MINIMUM": "", "MUL": "", "PACK": "not along batch",
    "PAD": "no padding of the batch dimension", "PRELU": "1-D alpha", "QUANTIZE": "", "REDUCE_MAX": "not batch",
    "REDUCE_MIN": "not batch", "RELU": "", "RELU6": "", "RELU_N1_TO_1": "", "RESHAPE": "large tensors may not map",
    "RESIZE_BILINEAR": "3-D input/output", "RESIZE_NEAREST_NEIGHBOR": "3-D input/output", "RSQRT": "",
    "SLICE": "", "SOFTMAX": "1-D input, at most 16,000 elements", "SPACE_TO_DEPTH": "", "SPLIT": "not batch",
    "SQUARED_DIFFERENCE": "", "SQUEEZE": "", "STRIDED_SLICE": "stride 1 or 2", "SUB": "", "SUM": "not batch",
    "TANH": "", "TRANSPOSE": "not batch", "TRANSPOSE_CONV": "",
}
_EIGHT_BIT = ("int8", "uint8")
_BATCH_AXIS_OPS = {"MEAN": 1, "PAD": 1}  # op -> which input holds axes / paddings


def _problems(op: dict, tensors: dict, constants: set[int], read) -> list[str]:
    name = op["op_name"]
    if name not in SUPPORTED:
        return [f"{name} is not in the Edge TPU's supported operations"]
    found = []
    for i in (*op["inputs"], *op["outputs"]):
        if i < 0 or i in constants:
            continue
        t = tensors[i]
        if t["dtype"].__name__ not in _EIGHT_BIT:
            found.append(f"tensor {t['name']!r} is {t['dtype'].__name__}, not 8-bit")
        if sum(int(s) > 1 for s in t["shape"][:-3]) > 0:
            found.append(f"tensor {t['name']!r} {list(t['shape'])} has more than 3 dimensions larger than 1")
    if name in _BATCH_AXIS_OPS and len(op["inputs"]) > 1:
        found += _batch_axis_problem(name, read(op["inputs"][_BATCH_AXIS_OPS[name]]))
    return found


def _batch_axis_problem(name: str, value: np.ndarray | None) -> list[str]:
    if value is None:
        return []
    if name == "MEAN" and 0 in np.asarray(value).ravel():
        return ["MEAN reduces over the batch dimension"]
    if name == "PAD" and np.asarray(value).ndim == 2 and np.asarray(value)[0].any():
        return ["PAD pads the batch dimension"]
    return []


def op_report(tflite_path: str | Path) -> dict:
    """Every op of the model with type, tensor dtypes/shapes and Edge TPU support; the first fallback."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(tflite_path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    produced = {i for op in ops for i in op["outputs"]} | {d["index"] for d in interp.get_input_details()}
    constants = {i for op in ops for i in op["inputs"] if i >= 0 and i not in produced}

    def read(i: int) -> np.ndarray | None:
        try:
            return interp.get_tensor(i)
        except ValueError:
            return None

    rows = [_row(op, tensors, _problems(op, tensors, constants, read)) for op in ops]
    return _summary(rows)


def _row(op: dict, tensors: dict, problems: list[str]) -> dict:
    def desc(i: int) -> dict:
        return {"name": tensors[i]["name"], "dtype": tensors[i]["dtype"].__name__,
                "shape": [int(s) for s in tensors[i]["shape"]]}
    return {"index": int(op["index"]), "op": op["op_name"], "inputs": [desc(i) for i in op["inputs"] if i >= 0],
            "outputs": [desc(i) for i in op["outputs"]], "edgetpu": not problems, "problems": problems}


def _summary(rows: list[dict]) -> dict:
    first = next((r for r in rows if not r["edgetpu"]), None)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["op"]] = counts.get(r["op"], 0) + 1
    split = None if first is None else {
        "index": first["index"], "op": first["op"], "problems": first["problems"], "ops_before": first["index"],
        "ops_on_cpu_from_here": len(rows) - first["index"]}
    return {"ops": len(rows), "supported_ops": sum(r["edgetpu"] for r in rows), "op_counts": counts,
            "first_cpu_fallback": split, "all_supported": first is None, "table": rows}


_PATTERNS = {
    "tpu_ops": r"Number of operations that will run on Edge TPU:\s*(\d+)",
    "cpu_ops": r"Number of operations that will run on CPU:\s*(\d+)",
    "total_ops": r"Total number of operations:\s*(\d+)",
    "subgraphs": r"Number of Edge TPU subgraphs:\s*(\d+)",
    "on_chip_used": r"On-chip memory used for caching model parameters:\s*(\S+)",
    "on_chip_remaining": r"On-chip memory remaining for caching model parameters:\s*(\S+)",
    "off_chip_used": r"Off-chip memory used for streaming uncached model parameters:\s*(\S+)",
    "version": r"Edge TPU Compiler version\s*(\S+)",
}


def parse_compiler_output(text: str) -> dict:
    """The compiler's summary as numbers/strings; ops all mapped when no CPU line is printed."""
    out: dict = {}
    for key, pattern in _PATTERNS.items():
        m = re.search(pattern, text)
        if m:
            out[key] = int(m.group(1)) if m.group(1).isdigit() else m.group(1)
    if "tpu_ops" not in out and "total_ops" in out:
        mapped = sum(int(n) for n in re.findall(r"^\S+\s+(\d+)\s+Mapped to Edge TPU\s*$", text, re.M))
        out["tpu_ops"], out["cpu_ops"] = mapped or out["total_ops"], out["total_ops"] - (mapped or out["total_ops"])
    return out


def compile_model(int8_path: str | Path, outdir: str | Path, compiler: str = COMPILER,
                  timeout: float = 600) -> dict | None:
    """Run the Edge TPU compiler if on PATH. None when it is not; else the result with the log kept.
    A failing compiler is a ConvertError carrying the end of its output."""
    exe = shutil.which(compiler)
    if exe is None:
        return None
    int8_path, outdir = Path(int8_path), Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "-s", "-o", str(outdir), str(int8_path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ConvertError(f"{exe}: the Edge TPU compiler could not run ({err})") from None
    log = proc.stdout + proc.stderr
    (outdir / "edgetpu_compiler.log").write_text(log)
    compiled = outdir / f"{int8_path.stem}_edgetpu.tflite"
    if proc.returncode != 0 or not compiled.is_file():
        tail = " | ".join(log.strip().splitlines()[-5:])
        raise ConvertError(f"{exe} failed (exit {proc.returncode}) on {int8_path.name}: {tail}")
    own_log = outdir / f"{int8_path.stem}_edgetpu.log"
    return {"compiler": exe, "command": [Path(exe).name, *cmd[1:-2], "OUT", int8_path.name],
            "model": compiled, "log": log, "compiler_log": own_log.read_text() if own_log.is_file() else None,
            **parse_compiler_output(log)}
