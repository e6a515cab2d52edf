"""The thin command-line tools: tools/train.py, tools/evaluate.py, tools/compare.py (run in-process)."""
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

TOOLS = Path(__file__).resolve().parent.parent / "tools"
TINY = ["dataset=digits", "model_kwargs={img_size: 8}", "batch_instances=4", "epochs=2", "episodes_per_epoch=10",
        "progress=false", "lr=0.1"]


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_train_print_config_applies_flags_and_overrides(capsys):
    assert _tool("train")(["--config", str(TOOLS.parent / "configs" / "fashion_mnist" / "arcface.yaml"), "--print-config",
                           "--device", "cpu", "head_kwargs.margin=0.2", "epochs=4"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["device"], cfg["epochs"], cfg["head_kwargs"]["margin"], cfg["head_kwargs"]["margin_warmup_epochs"]) == (
        "cpu", 4, 0.2, 20)


def test_train_reports_config_errors_with_exit_code_2(capsys):
    assert _tool("train")(["lr_rate=0.1"]) == 2
    assert "unknown key 'lr_rate'" in capsys.readouterr().err


def test_train_then_evaluate_prints_the_same_test_accuracy(tmp_path, capsys):
    run = tmp_path / "run"
    assert _tool("train")([*TINY, f"output_dir={run}"]) == 0
    assert "best epoch" in capsys.readouterr().out
    results = json.loads((run / "results.json").read_text())
    assert _tool("evaluate")([str(run), "--json", "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["checkpoint"].endswith("best.pt") and evaluated["epoch"] == results["best_epoch"]
    assert evaluated["accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-9)
    assert _tool("train")([*TINY, f"output_dir={run}"]) == 2  # the folder holds a run: no silent overwrite
    assert "--resume" in capsys.readouterr().err


def test_compare_prints_and_writes_the_tables(tmp_path, capsys):
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({"dataset": "digits", "model_kwargs": {"img_size": 8}, "batch_instances": 4,
                                      "epochs": 1, "episodes_per_epoch": 6, "test_retrieval": False}))
    code = _tool("compare")(["--config", str(config), "--heads", "standard", "softmax", "--seeds", "1", "--out",
                             str(tmp_path / "out"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "Table 2 layout" in out and out.count("| standard |") == 3  # the alias ran once
    assert (tmp_path / "out" / "comparison.md").read_text() in out
