"""Kill a training run with SIGKILL mid-run, resume it from its run folder with tools/train.py, and
end with the same epochs, the same weights as an uninterrupted run and a loadable best checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from polyheads.training import load_config, train
from polyheads.training.checkpoint import load_checkpoint
from polyheads.training.trainer import build_model

TOOLS = Path(__file__).resolve().parent.parent / "tools"
ARGS = ["dataset=digits", "model_kwargs={img_size: 8}", "batch_instances=4", "episodes_per_epoch=150", "epochs=10",
        "head=cosine", "lr=0.1", "progress=false", "evaluate_test=false"]


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sigkill_mid_run_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(TOOLS / "train.py"), *ARGS, f"output_dir={run_dir}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while len(_rows(run_dir)) < 2:  # killed once two epochs are on disk, i.e. during the third or later
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "the run made no progress"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    done = load_checkpoint(run_dir / "last.pt")["epoch"] + 1
    assert 2 <= done < 10  # nothing beyond the last finished epoch is lost or invented

    resumed = subprocess.run([sys.executable, str(TOOLS / "train.py"), "--resume", str(run_dir)], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed {run_dir / 'last.pt'} after epoch {done - 1}" in resumed.stdout
    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == list(range(10))  # every epoch exactly once

    # the same run without interruption, in this process with the same single thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(None, [*ARGS, f"output_dir={tmp_path / 'straight'}"])
        train(cfg, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    final = load_checkpoint(run_dir / "last.pt")
    assert all(torch.equal(straight["model"][k], final["model"][k]) for k in straight["model"])
    assert [r["val_accuracy"] for r in straight["history"]] == [r["val_accuracy"] for r in rows]

    best = load_checkpoint(run_dir / "best.pt")
    assert best["epoch"] == max(range(10), key=lambda e: (rows[e]["val_accuracy"], -e))
    model = build_model(cfg, best["num_classes"], best["in_chans"])
    model.load_state_dict(best["model"])
