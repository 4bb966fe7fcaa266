"""Every command turns the same error into the same exit code and message through edge.cli.run_main."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from convert.errors import ConvertError
from edge.errors import BundleError, FilmError, StoreError, XrayError
from train.checkpoint import CheckpointError
from train.config import ConfigError
from train.engine import FitError
from train.labels import DataError
from train.phantoms import PhantomError

ROOT = Path(__file__).resolve().parents[1]

# module -> (the prog its messages start with, arguments its parser accepts)
COMMANDS = {
    "edge.scan": ("edge.scan", ["film.png", "--bundle", "b", "--out", "o"]),
    "edge.capture": ("edge.capture", ["--bundle", "b", "--out", "o"]),
    "edge.bench": ("edge.bench", []),
    "edge.serve": ("edge.serve", ["--bundle", "b", "--out", "o"]),
    "edge.web.bench": ("edge.web.bench", []),
    "edge.systemd": ("edge.systemd", ["--bundle", "b", "--out", "o", "--user", "pi"]),
    "train.__main__": ("train", ["--data", "d", "--out", "o"]),
    "train.evaluate": ("train.evaluate", ["run/best.safetensors", "--data", "d"]),
    "train.phantoms": ("train.phantoms", ["--out", "o", "--patients", "1", "--seed", "0"]),
    "train.bench": ("train.bench", []),
    "convert.__main__": ("convert", ["run/best.safetensors", "--data", "d", "--out", "o"]),
    "convert.bench": ("convert.bench", ["bundle"]),
    "convert.spread": ("convert.spread", ["--out", "o"]),
    "convert.oddballs": ("convert.oddballs", ["--out", "o"]),
    "convert.guardcheck": ("convert.guardcheck", ["bundle", "--data", "d"]),
    "convert.importer": ("convert.importer", ["chexnet", "model.pth.tar", "--out", "o"]),
}

ERRORS = [XrayError("plain"), BundleError("b: damaged"), FilmError("a.png", "not an image"), StoreError("full"),
          ConvertError("too big"), CheckpointError("ckpt: damaged"), ConfigError("lr: must be positive"),
          FitError("run: not found"), DataError("Data_Entry.csv", "no rows"), PhantomError("bad count")]


def _commands_in_tree() -> set[str]:
    found = set()
    for package in ("edge", "train", "convert"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
                found.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def test_the_list_names_every_command():
    assert _commands_in_tree() == set(COMMANDS)


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_same_error_same_exit_code_and_message(module, monkeypatch, capsys):
    mod = importlib.import_module(module)
    prog, argv = COMMANDS[module]
    for err in ERRORS:
        def run(args, err=err):
            raise err
        monkeypatch.setattr(mod, "_run", run)
        assert mod.main(argv) == err.exit_code == 2, (module, err)
        assert capsys.readouterr().err == f"{prog}: error: {err}\n"

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(mod, "_run", interrupted)
    assert mod.main(argv) == 130
    assert capsys.readouterr().err.startswith(f"{prog}: ")

    def bug(args):
        raise RuntimeError("a bug keeps its traceback")
    monkeypatch.setattr(mod, "_run", bug)
    with pytest.raises(RuntimeError):
        mod.main(argv)


def test_every_error_class_has_one_root():
    for cls in (BundleError, FilmError, StoreError, ConvertError, CheckpointError, ConfigError, FitError, DataError,
                PhantomError):
        assert issubclass(cls, XrayError)
    assert issubclass(ConfigError, ValueError)  # kept: callers that validate values catch ValueError


def test_film_error_kind():
    damaged = FilmError("a.png", "damaged or unsupported PNG image (broken data)")
    assert damaged.kind == "damaged or unsupported PNG image"
    assert FilmError("a.png", "not an image: text", kind="not an image").kind == "not an image"
