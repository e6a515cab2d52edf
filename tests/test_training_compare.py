"""The comparison (seed 000's R replications, mean ± standard error, Tables 1-4 layout)."""
import csv
import math

import numpy as np
import pytest
import scipy.stats

from polyheads.training import load_config
from polyheads.training.compare import compare, format_tables, head_config, summarize, write_tables


def _records(rng):
    records = []
    for head, acc in (("standard", 0.90), ("cosine", 0.91), ("vmf", 0.80)):
        for seed in range(4):
            records.append({"dataset": "fashion_mnist", "head": head, "seed": seed,
                            "test": {"accuracy": acc + 0.002 * rng.normal(), "ece": 0.05 + 0.01 * rng.random(),
                                     "ece_temperature_scaled": 0.02, "confidence_auroc": 0.8 + 0.01 * seed}})
    records.append({"dataset": "fashion_mnist", "head": "broken", "seed": 0, "error": "ValueError: lr too large"})
    return records


def test_mean_and_standard_error_match_scipy(rng):
    records = _records(rng)
    summary = summarize(records)
    for head in ("standard", "cosine", "vmf"):
        values = np.array([r["test"]["accuracy"] * 100 for r in records if r["head"] == head])
        mean, se, n = summary["cells"][("fashion_mnist", head, "accuracy")]
        assert n == 4 and mean == pytest.approx(values.mean()) and se == pytest.approx(scipy.stats.sem(values))
    assert summary["cells"][("fashion_mnist", "cosine", "auroc")][0] == pytest.approx(0.815)  # AUROC unscaled
    assert summary["failures"] == {("fashion_mnist", "broken"): ["ValueError: lr too large"]}


def test_tables_bold_the_best_and_those_within_error(rng):
    text = format_tables(summarize(_records(rng)))
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "loss" not in line}
    assert "Table 2 layout" in text and "Table 3 layout" in text and "Table 1 layout" in text
    assert "Table 4 layout" not in text  # no retrieval metrics in these records
    table2 = text.split("Table 3 layout")[0]
    assert "| cosine | **90." in table2 and "| standard | 90." in table2 and "| vmf | 79." in table2  # only the best bold
    assert "failed" in lines["broken"] and "lr too large" in text
    assert " ± " in lines["standard"]


def test_single_replication_has_no_error_bar():
    records = [{"dataset": "d", "head": "h", "seed": 0, "test": {"accuracy": 0.5}}]
    mean, se, n = summarize(records)["cells"][("d", "h", "accuracy")]
    assert (mean, n) == (50.0, 1) and math.isnan(se)
    assert "| h | **50.00** |" in format_tables(summarize(records))


def test_per_head_config_contributes_only_its_tuned_keys(tmp_path):
    (tmp_path / "cosine.yaml").write_text("head: cosine\nlr: 0.5\nnesterov: true\nhead_kwargs: {init_tau: 1.0}\n"
                                          "epochs: 1000\nembedding_dim: 3\n")
    base = load_config(None, ["epochs=2", "lr=0.01"])
    cfg = head_config(base, "cosine", 4, tmp_path)
    assert (cfg.head, cfg.seed, cfg.lr, cfg.nesterov, cfg.head_kwargs, cfg.epochs) == ("cosine", 4, 0.5, True,
                                                                                          {"init_tau": 1.0}, 2)
    other = head_config(base, "normface", 1, tmp_path, ["lr=0.2"])
    assert (other.lr, other.head_kwargs) == (0.2, {})


def test_compare_end_to_end_on_tiny_data(tmp_path):
    base = load_config(None, ["dataset=digits", "model_kwargs={img_size: 8}", "batch_instances=4", "epochs=1",
                              "episodes_per_epoch=8", "lr=0.1", "test_retrieval=false"])
    records = compare(base, ["standard", "cosine"], seeds=2, out_dir=tmp_path, progress=False, log=lambda _: None)
    assert [(r["head"], r["seed"]) for r in records] == [("standard", 0), ("standard", 1), ("cosine", 0), ("cosine", 1)]
    assert all("error" not in r and r["epochs_run"] == 1 for r in records)
    assert (tmp_path / "digits" / "cosine" / "seed1" / "best.pt").exists()
    paths = write_tables(records, tmp_path)
    rows = list(csv.DictReader(open(paths["csv"])))
    accuracy = {r["head"]: r for r in rows if r["metric"] == "accuracy"}
    assert set(accuracy) == {"standard", "cosine"} and all(r["n"] == "2" for r in accuracy.values())
    values = [100 * r["test"]["accuracy"] for r in records if r["head"] == "cosine"]
    assert float(accuracy["cosine"]["mean"]) == pytest.approx(np.mean(values), rel=1e-5)
    assert "| cosine |" in paths["markdown"].read_text()


def test_compare_all_means_every_geometry_but_not_wrappers():
    from polyheads import list_heads
    from polyheads.training.compare import comparable_heads

    heads = comparable_heads()
    assert "sharded" in list_heads() and "sharded" not in heads
    assert set(heads) == set(list_heads()) - {"sharded"}
