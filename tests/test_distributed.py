"""torch.distributed on CPU (gloo, 2 processes spawned here, localhost, free ports): class-sharded heads
against the unsharded heads, head state kept equal across ranks, DDP training with the trainer, a
2-rank checkpoint resumed on 1 rank, and tools/train.py under torchrun (issue 10)."""
import json
import math
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import polyheads
from polyheads import create_head
from polyheads.distributed import (
    SHARDABLE_HEADS,
    ShardedHead,
    gather_rows,
    local_state,
    shard_bounds,
    sharded_cross_entropy,
)
from polyheads.training import load_config
from polyheads.training.checkpoint import load_checkpoint
from polyheads.training.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
WORLD = 2
IN, DIM, K = 6, 5, 7  # K = 7 over 2 ranks: shards of 4 and 3 classes
ROWS = [(0, 5), (5, 8)]  # rank 0 holds 5 rows of the batch, rank 1 holds 3
BASE_KWARGS = {"arcface": {"margin": 0.4}, "cosface": {"margin": 0.3}, "sphereface": {"lambda_base": 3.0, "lambda_min": 1.0},
               "cosine": {"init_tau": 0.7}, "vmf": {"num_samples": 4}}
TRAIN_ARGS = ["dataset=fashion_mnist", "train_subset=300", "batch_classes=5", "batch_instances=4",
              "episodes_per_epoch=6", "epochs=1", "eval_batch_size=100", "init_samples=100", "progress=false",
              "evaluate_test=false", "lr=0.05"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def close(a, b, tol=1e-10):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert err <= tol, err
    return err


# ---------------------------------------------------------------------------------------------- the workers
def _check_cross_entropy(rank):
    """The distributed max / log-sum-exp: the class blocks sit 2000 apart (one rank's exp underflows
    entirely) and the result is still torch's cross-entropy of the concatenated logits."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 9, generator=gen, dtype=torch.float64) * 3
    logits[:, :4] += 2000.0
    target = torch.tensor([0, 3, 4, 8, 2, 6])
    start, end = shard_bounds(9, rank, WORLD)
    mine = logits[:, start:end].clone().requires_grad_(True)
    value = sharded_cross_entropy(mine, target, start, end)
    full = logits.clone().requires_grad_(True)
    expected = F.cross_entropy(full, target)
    expected.backward()
    value.backward()
    close(value.detach(), expected.detach(), 1e-12)
    close(mine.grad, full.grad[:, start:end], 1e-14)  # the softmax gradient needs nothing from the other rank


def _check_head(rank, base):
    torch.manual_seed(0)
    kwargs = BASE_KWARGS.get(base, {})
    ref = create_head(base, IN, K, dim=DIM, **kwargs).double()
    head = ShardedHead(IN, K, dim=DIM, base=base, **kwargs).double()
    assert (head.class_start, head.class_end) == shard_bounds(K, rank, WORLD)
    assert head.local.weight.shape == (head.class_end - head.class_start, DIM)  # K/world class weights
    head.load_unsharded(ref.state_dict())
    x_all = torch.randn(8, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(7))  # the same on both ranks
    y_all = torch.tensor([0, 6, 3, 4, 1, 6, 2, 5])
    lo, hi = ROWS[rank]
    if base == "vmf":  # α from all ranks' features (App. D) equals α from the whole set
        with local_state():  # the reference: one process's α from all the features
            ref.init_from_data(x_all)
        head.init_from_data(x_all[lo:hi])
        close(head.local.alpha, ref.alpha, 1e-12)
    extra = {"generator": 11} if base == "vmf" else {}
    x = x_all[lo:hi].clone().requires_grad_(True)
    xf = x_all.clone().requires_grad_(True)
    loss = head.loss(x, y_all[lo:hi], **extra)
    expected = ref.loss(xf, y_all, **extra)
    close(loss.detach(), expected.detach(), 1e-10)  # the global batch's loss, on every rank
    loss.backward()
    expected.backward()
    close(x.grad, xf.grad[lo:hi], 1e-10)
    s, e = head.class_start, head.class_end
    close(head.local.weight.grad, ref.weight.grad[s:e], 1e-10)  # exact on the rank owning the rows
    params = dict(ref.named_parameters())
    for name, p in head.local.named_parameters():
        if name != "weight":  # replicated: the ranks' shares sum to the gradient
            total = p.grad.clone()
            dist.all_reduce(total)
            close(total, params[name].grad, 1e-10)
    if base == "sphereface":
        assert int(head.local.num_steps) == int(ref.num_steps) == 1
    with torch.no_grad():
        close(head(x_all[lo:hi]), ref(x_all)[lo:hi], 1e-10)  # train-mode logits [B, K], all classes
        head.eval(), ref.eval()
        if base == "vmf":  # the Monte-Carlo predictive, normalised over both ranks' classes
            log_p = head(x_all[lo:hi], generator=5, num_samples=2000)
            close(log_p.logsumexp(1), torch.zeros(hi - lo, dtype=torch.float64), 1e-10)
            ref_p = ref(x_all, generator=5, num_samples=2000)[lo:hi]
            close(log_p.exp(), ref_p.exp(), 0.03)  # two estimates of one expectation
        else:
            close(head(x_all[lo:hi]), ref(x_all)[lo:hi], 1e-10)


def _check_sampling(rank):
    """PartialFC: the loss is the unsharded loss over the sampled classes (every batch class kept)."""
    torch.manual_seed(1)
    k = 12
    ref = create_head("arcface", IN, k, dim=DIM, margin=0.3).double()
    head = ShardedHead(IN, k, dim=DIM, base="arcface", margin=0.3, sample_rate=0.5).double()
    head.load_unsharded(ref.state_dict())
    x_all = torch.randn(8, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    y_all = torch.tensor([0, 7, 3, 7, 1, 9, 2, 0])
    lo, hi = ROWS[rank]
    torch.manual_seed(100 + rank)  # each rank draws its own negatives
    loss = head.loss(x_all[lo:hi], y_all[lo:hi])
    loss.backward()
    picked = [None, None]
    dist.all_gather_object(picked, head.last_sampled.tolist())
    columns = torch.tensor(sorted(picked[0] + picked[1]))
    s, e = head.class_start, head.class_end
    mine = torch.tensor(picked[rank])
    owned = {int(c) for c in y_all if s <= c < e}
    assert owned <= set(picked[rank]) and len(mine) == max(math.ceil(0.5 * (e - s)), len(owned))
    z = ref.embed(x_all)
    logits = ref.training_logits(z, y_all)[:, columns]
    expected = F.cross_entropy(logits, torch.searchsorted(columns, y_all))
    expected.backward()
    close(loss.detach(), expected.detach(), 1e-10)
    grad = head.local.weight.grad
    close(grad[mine - s], ref.weight.grad[mine], 1e-10)
    dropped = torch.ones(e - s, dtype=torch.bool)
    dropped[mine - s] = False
    assert bool((grad[dropped] == 0).all())


def _check_head_state(rank):
    """Centre steps, triplet centroids: the update of one process on the concatenated batch, on every rank."""
    x_all = torch.randn(10, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y_all = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 0])
    lo, hi = [(0, 4), (4, 10)][rank]
    for name in ("center", "triplet"):
        torch.manual_seed(2)
        ref = create_head(name, IN, 4, dim=DIM).double().train()
        head = create_head(name, IN, 4, dim=DIM).double().train()
        head.load_state_dict(ref.state_dict())
        for _ in range(2):  # the second step starts from the synchronised state
            head.loss(x_all[lo:hi], y_all[lo:hi])
            with local_state():  # the reference: one process on the concatenated batch
                ref.loss(x_all, y_all)
        for key, value in ref.named_buffers():
            mine = dict(head.named_buffers())[key]
            close(mine, value, 1e-12)


def _check_ddp_step(rank):
    """One DDP step with a sharded head (class weights left out of DDP, gradients summed) moves every
    weight exactly as one DDP step with the unsharded head (local mean losses, gradients averaged)."""
    from polyheads.training.engine import wrap_ddp

    torch.manual_seed(0)
    kwargs = {"dim": 4, "margin": 0.3, "init_tau": 0.5}
    plain = polyheads.create_model("convnet_mnist", num_classes=10, head="arcface", head_kwargs=kwargs).double()
    sharded = polyheads.create_model("convnet_mnist", num_classes=10, head="sharded",
                                     head_kwargs={"base": "arcface", **kwargs}).double()
    sharded.load_state_dict({k.replace("fc.", "fc.local."): v for k, v in plain.state_dict().items()})
    gen = torch.Generator().manual_seed(20 + rank)  # each rank its own batch
    images = torch.randn(6, 1, 28, 28, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 10, (6,), generator=gen)
    losses = []
    for model in (plain, sharded):
        step = wrap_ddp(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        loss = step(images, target)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    both = [None, None]
    dist.all_gather_object(both, float(losses[0]))
    close(losses[1], torch.tensor(sum(both) / 2, dtype=torch.float64), 1e-12)  # the global batch's loss
    head = polyheads.get_head(sharded)
    after = sharded.state_dict()
    for key, value in plain.state_dict().items():
        mine = after[key.replace("fc.", "fc.local.")]
        close(mine, value[head.class_start:head.class_end] if key == "fc.weight" else value, 1e-10)


def _train(rank, out, args):
    torch.set_num_threads(1)
    recorded = {}

    class Recording(Trainer):
        def _state(self, epoch, finished):  # the weights after the last step, before best.pt is loaded
            recorded.update({k: v.detach().clone() for k, v in self.model.state_dict().items()})
            return super()._state(epoch, finished)

    Recording(load_config(None, args), log=lambda _: None).fit()
    torch.save(recorded, Path(out) / f"rank{rank}.pt")


def _worker(rank, port, out, run_a, run_b):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=120))
    try:
        _check_cross_entropy(rank)
        for base in SHARDABLE_HEADS:
            _check_head(rank, base)
        _check_sampling(rank)
        _check_head_state(rank)
        _check_ddp_step(rank)
        for name, args in (("a", run_a), ("b", run_b)):
            folder = Path(out) / name
            folder.mkdir(exist_ok=True)
            _train(rank, folder, args)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One spawn of 2 gloo processes runs the head checks (asserting inside) and two 1-epoch DDP runs."""
    out = tmp_path_factory.mktemp("dist")
    run_a = [*TRAIN_ARGS, "head=center", f"output_dir={out / 'run_a'}"]
    run_b = [*TRAIN_ARGS, "head=sharded", "head_kwargs={base: arcface, margin: 0.3}", "embedding_dim=4",
             f"output_dir={out / 'run_b'}"]
    mp.spawn(_worker, args=(free_port(), str(out), run_a, run_b), nprocs=WORLD, join=True)
    return out


def test_sharded_heads_equal_unsharded_and_head_state_is_shared(two_ranks):
    # the assertions ran inside both ranks (a failure there fails the spawn): loss, input / class-weight /
    # replicated gradients and logits of every shardable head, PartialFC sampling, centres, centroids, α
    assert set(SHARDABLE_HEADS) >= {"standard", "cosine", "arcface", "cosface", "vmf"}
    assert (two_ranks / "a" / "rank1.pt").exists() and (two_ranks / "b" / "rank1.pt").exists()


@pytest.mark.parametrize("run", ["a", "b"])
def test_ddp_ranks_end_with_identical_weights(two_ranks, run):
    states = [torch.load(two_ranks / run / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    checkpoint = load_checkpoint(two_ranks / f"run_{run}" / "last.pt")
    assert checkpoint["world_size"] == WORLD and len(checkpoint["history"]) == 1
    sharded = [k for k in states[0] if k.endswith("local.weight")]
    assert bool(sharded) == (run == "b")
    for key, value in states[0].items():
        if key in sharded:  # each rank holds its rows; the checkpoint holds them all, in rank order
            whole = torch.cat([s[key] for s in states])
            assert states[0][key].shape[0] + states[1][key].shape[0] == 10 and torch.equal(checkpoint["model"][key], whole)
        else:
            assert torch.equal(value, states[1][key]), key
            assert torch.equal(value, checkpoint["model"][key]), key
    centers = [k for k in states[0] if k.endswith("centers")]
    assert (run == "a") == bool(centers) and all(float(states[0][k].abs().sum()) > 0 for k in centers)


def test_two_rank_checkpoint_resumes_on_one_rank(two_ranks):
    run = two_ranks / "run_b"
    saved = load_checkpoint(run / "last.pt")
    key = next(k for k in saved["model"] if k.endswith("local.weight"))
    cfg = load_config(None, [*TRAIN_ARGS, "head=sharded", "head_kwargs={base: arcface, margin: 0.3}", "embedding_dim=4",
                             f"output_dir={run}", "epochs=2"])
    trainer = Trainer(cfg, resume=run, log=lambda _: None)
    assert trainer.prepare() == 1
    head = polyheads.get_head(trainer.model)
    assert (head.world_size, head.class_start, head.class_end) == (1, 0, 10)
    for k, v in trainer.model.state_dict().items():  # one rank holds the two ranks' rows
        assert torch.equal(v, saved["model"][k]), k
    momentum = trainer.optimizer.state[head.local.weight]["momentum_buffer"]
    packed = trainer.optimizer.state_dict()
    index = next(i for g, pg in zip(trainer.optimizer.param_groups, packed["param_groups"])
                 for p, i in zip(g["params"], pg["params"]) if p is head.local.weight)
    assert momentum.shape == (10, 4) and torch.equal(momentum, saved["optimizer"]["state"][index]["momentum_buffer"])
    result = Trainer(cfg, resume=run, log=lambda _: None).fit()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert result.epochs_run == 2 and [r["epoch"] for r in rows] == [0, 1]
    final = load_checkpoint(run / "last.pt")
    assert final["world_size"] == 1 and final["model"][key].shape == (10, 4)
    assert not torch.equal(final["model"][key], saved["model"][key])  # it trained on


def test_train_tool_under_torchrun(tmp_path):
    """tools/train.py launched by torchrun: DDP on gloo, one log and one run folder (rank 0's)."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={WORLD}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(ROOT / "tools" / "train.py"),
           "dataset=digits", "model_kwargs={img_size: 8}", "batch_instances=4", "episodes_per_epoch=8", "epochs=1",
           "head=vmf", "progress=false", "evaluate_test=false", f"output_dir={run}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.count("epoch   1/1") == 1 and out.count("best epoch 1") == 1, out  # rank 0 logs, once
    assert "distributed: 2 ranks (gloo)" in out and "on 2 ranks" in out
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and math.isfinite(json.loads(rows[0])["train_loss"])
    results = json.loads((run / "results.json").read_text())
    assert results["world_size"] == WORLD
    # 8 episodes shared by 2 ranks: 4 steps each, 2 episodes per step
    assert load_checkpoint(run / "last.pt")["history"][0]["images_per_s"] > 0


def test_gather_rows_and_shard_bounds_without_a_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_rows(x) is x  # one process: the identity
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(int(t[0]), int(t[-1]) + 1) for t in torch.arange(10).tensor_split(3)]
    with pytest.raises(ValueError, match="base"):
        ShardedHead(IN, K, base="cube")
    with pytest.raises(ValueError, match="sample_rate"):
        ShardedHead(IN, K, sample_rate=0.0)
