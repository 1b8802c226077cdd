"""train.micro_batch (gradient caching; MoCo-v2's plain accumulation), grad checkpointing and
compile: what each computes, against the step it stands for (fp32)."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from conftest import run_cli
from helpers_tiny import tiny_overrides
from sslkit import config
from sslkit.methods import MoCoV3, build_method, resolved
from sslkit.models.backbones import build_backbone
from sslkit.train.engine import Trainer
from sslkit.train.microbatch import all_reduce_grads, micro_step, pieces

pytestmark = pytest.mark.usefixtures("one_thread")

VIT = ["model.backbone=vit_tiny", "model.patch_size=4", "model.vit_depth=2",
       "method.name=mocov3", "method.pred_hidden_dim=32", "method.proj_bn=true"]


def trainer(tmp_path, name: str, micro: int | None, extra=(), batch: int = 16) -> Trainer:
    items = tiny_overrides(tmp_path / name, extra=[
        "run.tensorboard=false", "eval.knn_every=0", "run.aug_grid_every=0",
        f"train.batch_size={batch}", *extra, *([f"train.micro_batch={micro}"] if micro else [])])
    return Trainer(resolved(config.load(None, items)), overwrite=True)


def three_steps(t: Trainer, batch: int = 16) -> tuple[list[float], dict]:
    g = torch.Generator().manual_seed(5)
    images = (torch.rand(batch, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    labels = torch.zeros(batch, dtype=torch.long)
    losses = [t.train_step(images, labels).loss for _ in range(3)]
    return losses, {k: v.detach().clone() for k, v in t.method.state_dict().items()}


def assert_same_state(a: dict, b: dict, skip=()) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if not any(s in k for s in skip):
            torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-5,
                                       msg=lambda m, k=k: f"{k}: {m}")


# --------------------------------------------------------------------------- gradient caching
@pytest.mark.parametrize("bf", [[], ["batchformer.enabled=true"],
                                ["batchformer.enabled=true", "batchformer.keys=both"],
                                ["batchformer.enabled=true", "batchformer.frozen=true"]],
                         ids=["plain", "bf", "bf-keys-both", "bf-frozen"])
def test_vit_micro_batches_compute_the_whole_batch_step(tmp_path, bf):
    """A ViT (LayerNorm only in the backbone): micro-batches of 16 give the step of the
    whole batch of 64: the same first loss, and every parameter, the momentum encoder and
    the BatchFormer equal after 3 steps (the BatchFormer's dropout draws the same)."""
    whole, whole_state = three_steps(trainer(tmp_path, "whole", None, [*VIT, *bf], 64), 64)
    t = trainer(tmp_path, "micro", 16, [*VIT, *bf], 64)
    assert t.model_lines[0].startswith("micro-batches: 4 x 16") and "caching" in t.model_lines[0]
    assert len(t.model_lines) == 1  # no BatchNorm note: the ViT backbone has none
    micro, micro_state = three_steps(t, 64)
    assert micro[0] == pytest.approx(whole[0], rel=1e-6)
    assert micro == pytest.approx(whole, rel=1e-4)
    assert_same_state(whole_state, micro_state)


@pytest.mark.parametrize("bf", [False, True], ids=["plain-accumulation", "gradient-cache"])
def test_moco_v2_micro_batches_are_the_whole_step_with_the_matching_bn_split(tmp_path, bf):
    """MoCo-v2 in one process (shuffle-BN by split BatchNorm): micro-batches of 4 of a batch
    of 16 are the whole-batch step whose BatchNorm groups are those micro-batches
    (method.bn_splits=4): plain accumulation without BatchFormer, the cache with it."""
    extra = ["method.bn_splits=4", *(["batchformer.enabled=true"] if bf else [])]
    whole, whole_state = three_steps(trainer(tmp_path, "whole", None, extra))
    t = trainer(tmp_path, "micro", 4, extra)
    assert ("plain accumulation" in t.model_lines[0]) != bf
    assert "BatchNorm normalises each micro-batch of 4 images" in t.model_lines[1]
    micro, micro_state = three_steps(t)
    assert micro == pytest.approx(whole, rel=1e-4)
    # BatchNorm's running statistics move once per micro-batch (as that many processes'
    # would); the split BN moves them once per step towards the mean of its groups
    assert_same_state(whole_state, micro_state, skip=("running_", "num_batches_tracked"))
    assert torch.equal(whole_state["queue_ptr"], micro_state["queue_ptr"])  # 3 x 16 keys


def test_the_online_probe_and_the_health_signals_see_the_whole_batch(tmp_path):
    """Plain accumulation keeps what forward keeps: view 1's features (the online probe) and
    its plain queries with their keys (the health signals), for the whole batch."""
    t = trainer(tmp_path, "probe", 4, ["method.bn_splits=4"])
    three_steps(t)
    q, k = t.method.observed
    assert t.method.features.shape[0] == 16 and q.shape == k.shape and q.shape[0] == 16
    assert not q.requires_grad


# --------------------------------------------------------------------------- = N processes
N, WORLD = 4, 2


def _resnet_moco_v3() -> nn.Module:
    """MoCo-v3 on a ResNet-18 (BatchNorm in the backbone) with heads without BatchNorm, so
    that the backbone's BatchNorm is the only difference between a whole and a split batch."""
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18", width=4, cifar_stem=True)
    cfg = resolved(config.build({}, ["method.name=mocov3", "method.proj_hidden_dim=16",
                                     "method.proj_dim=8", "method.pred_hidden_dim=16",
                                     "method.temperature=0.2"]))
    method = MoCoV3(backbone, dim, cfg.method, cfg.batchformer)
    for head in (method.projector, method.predictor, method.momentum_projector):
        for name, child in list(head.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(head, name, nn.Identity())
    return method.train()


def _views(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(200 + step)
    return (torch.randn(N * WORLD, 3, 8, 8, generator=g),
            torch.randn(N * WORLD, 3, 8, 8, generator=g))


def _rank(rank: int, init: str, out: str) -> None:
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    method = _resnet_moco_v3()
    ddp = nn.parallel.DistributedDataParallel(method)
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    mine = slice(rank, None, WORLD)  # the rows of micro-batch `rank`
    for step in range(3):
        v1, v2 = _views(step)
        loss, _ = ddp(v1[mine], v2[mine])
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.momentum_update(0.99)
    if rank == 0:
        torch.save(method.state_dict(), os.path.join(out, "ddp.pt"))
    tdist.barrier()
    tdist.destroy_process_group()


def test_resnet_micro_batches_equal_that_many_processes(tmp_path):
    """One process with micro-batches of N = the same global batch over local_batch / N
    processes under DDP without SyncBN: the backbone's BatchNorm normalises each micro-batch
    as each process normalises its own batch."""
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD)
    method = _resnet_moco_v3()
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    for step in range(3):
        v1, v2 = _views(step)
        opt.zero_grad()
        micro_step(method, v1, v2, N, lambda loss: loss.backward(), torch.device("cpu"), "fp32")
        opt.step()
        method.momentum_update(0.99)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    ours = method.state_dict()
    for k in ours:  # running statistics: one process moves them per micro-batch, DDP per rank
        if "running_" not in k and "num_batches" not in k:
            torch.testing.assert_close(ours[k], ddp[k], rtol=1e-3, atol=3e-5,
                                       msg=lambda m, k=k: f"{k}: {m}")


def test_pieces_and_one_all_reduce(monkeypatch):
    assert pieces(8, 2) == [slice(0, None, 4), slice(1, None, 4), slice(2, None, 4),
                            slice(3, None, 4)]
    calls = []
    monkeypatch.setattr("sslkit.distributed.get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce",
                        lambda t: calls.append(t.numel()) or t.mul_(2))
    params = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(1))]
    for p in params[:2]:
        p.grad = torch.full_like(p, 3.0)
    all_reduce_grads(params)
    assert calls == [7]  # one flat buffer for the step, not one per tensor or micro-batch
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in params[:2])


# --------------------------------------------------------------------------- checkpointing
@pytest.mark.parametrize("extra", [VIT, ["method.name=mocov3", "method.pred_hidden_dim=32"]],
                         ids=["vit", "resnet"])
def test_grad_checkpointing_gives_the_same_gradients(tmp_path, extra):
    grads, stats = [], []
    for on in (False, True):
        items = tiny_overrides(tmp_path / "r", extra=[*extra, f"model.grad_checkpointing={on}"])
        cfg = resolved(config.load(None, items))
        torch.manual_seed(0)
        method = build_method(cfg).train()
        if on:
            from sslkit.models.recompute import enable_grad_checkpointing  # as the engine does

            assert enable_grad_checkpointing(method.backbone) >= 2
        torch.manual_seed(1)
        loss, _ = method(torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in method.named_parameters()
                      if p.grad is not None})
        stats.append({n: b.clone() for n, b in method.named_buffers()})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)
    for n in stats[0]:  # BatchNorm's running statistics move once, not twice
        assert torch.equal(stats[0][n], stats[1][n]), n


# --------------------------------------------------------------------------- compile
def test_compile_failure_falls_back_to_eager_with_one_note(tmp_path, monkeypatch, capsys):
    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler here\nsecond line")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    t = trainer(tmp_path, "c", None, ["run.compile=true"])
    losses, state = three_steps(t)
    notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note: torch")]
    assert sorted(notes) == [
        f"note: torch.compile of the {what} backbone failed (RuntimeError: no C++ compiler "
        f"here); it runs eagerly" for what in ("momentum", "online")]
    ref, ref_state = three_steps(trainer(tmp_path, "e", None))
    assert losses == ref
    assert not [k for k in state if "_orig_mod" in k]


@pytest.mark.slow
def test_compiled_backbones_give_the_eager_loss_and_plain_file_names(tmp_path):
    out = tmp_path / "compiled"
    items = tiny_overrides(out, extra=["eval.knn_every=0", "run.compile=true",
                                       "train.max_steps=3"])
    proc = run_cli("run_pretrain.py", *[a for it in items for a in ("--set", it)])
    assert proc.returncode == 0 and "note: torch.compile" not in proc.stdout, proc.stderr[-2000:]
    ref = tmp_path / "eager"
    items = tiny_overrides(ref, extra=["eval.knn_every=0", "train.max_steps=3"])
    assert run_cli("run_pretrain.py", *[a for it in items for a in ("--set", it)]).returncode == 0
    from sslkit.io.checkpoint import load_checkpoint

    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (out, ref))
    assert a["model"].keys() == b["model"].keys()
    backbone = torch.load(out / "backbone.pt", weights_only=True)
    assert not [k for k in [*a["model"], *backbone] if "_orig_mod" in k]
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k].float(), b["model"][k].float(), rtol=1e-3,
                                   atol=1e-4)


def test_resume_across_micro_batches_checkpointing_and_compile_is_exact(tmp_path, monkeypatch):
    """How a step runs is not part of the run: a run stopped after 2 steps resumes with
    micro-batches, grad checkpointing and compile (here failing to compile, so eager) to the
    weights of the run that never stopped (a ViT: every switch computes the same step)."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: (_ for _ in ()).throw(RuntimeError))
    items = tiny_overrides(tmp_path / "run", extra=[*VIT, "eval.knn_every=0", "train.max_steps=4",
                                                    "train.checkpoint_every_steps=1",
                                                    "run.tensorboard=false"])
    whole = Trainer(resolved(config.load(None, [*items, f"run.output_dir={tmp_path / 'ref'}"])))
    whole.fit()
    first = Trainer(resolved(config.load(None, items)))
    first.fit(stop_after_steps=2)
    switched = resolved(config.load(None, [*items, "train.micro_batch=4", "run.compile=true",
                                           "model.grad_checkpointing=true"]))
    second = Trainer(switched, resume=True)
    assert second.start_step == 2
    second.fit()
    assert_same_state(whole.method.state_dict(), second.method.state_dict())
