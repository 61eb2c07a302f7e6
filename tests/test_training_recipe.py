"""The training recipe: schedules in epochs or iterations and their rescaling, layer-wise LR,
staged backbone freezing (one process and two), gradient accumulation, AMP, exact resume."""
import glob
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import CONFIGS, TINY, load_config, run, train_net
from detectron2.data import MetadataCatalog

from cityscapes_ft.utils import read_metrics
from cityscapes_ft.schedule import resolve_training_schedule
from cityscapes_ft.errors import ConfigNotRunnable

NUM_TRAIN = 8  # conftest's synthetic training split


def expected_lr(t, base, warmup_iters, warmup_factor, steps, gamma=0.1):
    """Linear warmup from warmup_factor x base, then x gamma at each step (written out here, not
    taken from detectron2)."""
    factor = 1.0
    if t < warmup_iters:
        alpha = t / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    return base * factor * gamma ** sum(1 for s in steps if t >= s)


def lr_trace(out_dir, key="lr"):
    return {r["iteration"]: r[key] for r in read_metrics(os.path.join(out_dir, "metrics.json")) if key in r}


def tiny_cfg(out_dir, *opts):
    return load_config(TINY, "OUTPUT_DIR", str(out_dir), "DATASETS.TEST", "()",
                       "CITYSCAPES_FT.METRICS_PERIOD", "1", *opts)


def train_in_process(cfg, resume=False):
    from cityscapes_ft.engine import CityscapesFTTrainer, resolve_config

    trainer = CityscapesFTTrainer(resolve_config(cfg)[0])
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def load_model_state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def is_backbone(name):
    return name.startswith("backbone.bottom_up.")


# --- schedule conversion and scaling ----------------------------------------------------------

def test_epochs_convert_to_iterations_from_dataset_size_and_global_batch():
    cfg = load_config(TINY, "CITYSCAPES_FT.SCHEDULE.UNIT", "epochs",
                      "CITYSCAPES_FT.SCHEDULE.MAX_EPOCHS", "8", "CITYSCAPES_FT.SCHEDULE.STEPS_EPOCHS", "(5, 7)",
                      "CITYSCAPES_FT.SCHEDULE.CHECKPOINT_PERIOD_EPOCHS", "2",
                      "CITYSCAPES_FT.SCHEDULE.EVAL_PERIOD_EPOCHS", "4",
                      "CITYSCAPES_FT.BACKBONE_FREEZE.EPOCHS", "1.5", "SOLVER.IMS_PER_BATCH", "4")
    resolved, schedule = resolve_training_schedule(cfg, 1, 30)
    # 30 images / 4 per step = 7.5 iterations per epoch, rounded up where fractional
    assert resolved.SOLVER.MAX_ITER == 60
    assert tuple(resolved.SOLVER.STEPS) == (38, 53)
    assert resolved.SOLVER.CHECKPOINT_PERIOD == 15 and resolved.TEST.EVAL_PERIOD == 30
    assert resolved.CITYSCAPES_FT.BACKBONE_FREEZE.ITERS == 12
    assert schedule.iters_per_epoch == 7.5 and schedule.dataset_size == 30
    text = schedule.format()
    for piece in ("training images after filtering: 30", "global batch: 4", "iterations per epoch: 7.50",
                  "max iterations: 60 (8.00 epochs)", "38 (5.07 epochs)", "base LR: 0.005"):
        assert piece in text, piece
    # resolving the resolved config changes nothing
    again, _ = resolve_training_schedule(resolved, 1, 30)
    assert again == resolved


def test_world_size_scaling_keeps_per_process_batch_and_scales_lr_and_lengths():
    cfg = load_config(os.path.join(CONFIGS, "cs_ft_paper_4k.yaml"), "SOLVER.REFERENCE_WORLD_SIZE", "8")
    resolved, schedule = resolve_training_schedule(cfg, 4, 2975)
    assert resolved.SOLVER.IMS_PER_BATCH == 4  # 1 image per process, 4 processes
    assert resolved.SOLVER.BASE_LR == pytest.approx(0.005)
    assert resolved.SOLVER.MAX_ITER == 8000 and tuple(resolved.SOLVER.STEPS) == (6000,)
    assert resolved.SOLVER.WARMUP_ITERS == 1000 and resolved.SOLVER.CHECKPOINT_PERIOD == 2000
    assert resolved.TEST.EVAL_PERIOD == 4000
    assert schedule.lr_scale == pytest.approx(0.5) and schedule.world_size == 4
    # the epoch recipe keeps its passes over the data; only LR and warmup follow the batch
    cfg = load_config(os.path.join(CONFIGS, "cs_ft.yaml"), "SOLVER.REFERENCE_WORLD_SIZE", "8")
    resolved, _ = resolve_training_schedule(cfg, 16, 2975)
    assert resolved.SOLVER.IMS_PER_BATCH == 16 and resolved.SOLVER.BASE_LR == pytest.approx(0.02)
    assert resolved.SOLVER.MAX_ITER == 11900 and tuple(resolved.SOLVER.STEPS) == (10413,)
    assert resolved.SOLVER.WARMUP_ITERS == 250


def test_batch_change_against_the_reference_batch_scales_by_the_configured_rule():
    base = os.path.join(CONFIGS, "cs_ft.yaml")
    resolved, _ = resolve_training_schedule(load_config(base, "SOLVER.IMS_PER_BATCH", "32"), 8, 2975)
    assert resolved.SOLVER.BASE_LR == pytest.approx(0.04) and resolved.SOLVER.MAX_ITER == 5950
    resolved, _ = resolve_training_schedule(
        load_config(base, "SOLVER.IMS_PER_BATCH", "32", "CITYSCAPES_FT.SCHEDULE.LR_SCALING", "sqrt"),
        8, 2975)
    assert resolved.SOLVER.BASE_LR == pytest.approx(0.02)
    resolved, _ = resolve_training_schedule(
        load_config(base, "SOLVER.IMS_PER_BATCH", "32", "CITYSCAPES_FT.SCHEDULE.LR_SCALING", "none"),
        8, 2975)
    assert resolved.SOLVER.BASE_LR == pytest.approx(0.01)
    # iteration mode: lengths are stated at the reference batch
    resolved, _ = resolve_training_schedule(
        load_config(os.path.join(CONFIGS, "cs_ft_paper_4k.yaml"), "SOLVER.IMS_PER_BATCH", "16"),
        1, 2975)
    assert resolved.SOLVER.MAX_ITER == 2000 and tuple(resolved.SOLVER.STEPS) == (1500,)
    assert resolved.SOLVER.BASE_LR == pytest.approx(0.02) and resolved.SOLVER.WARMUP_ITERS == 250


def test_schedule_mistakes_are_named():
    base = os.path.join(CONFIGS, "cs_ft.yaml")
    with pytest.raises(ConfigNotRunnable, match="GRADIENT_ACCUMULATION_STEPS"):
        resolve_training_schedule(load_config(base, "CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS", "3"), 1,
                                  10)
    with pytest.raises(ConfigNotRunnable, match="no training images"):
        resolve_training_schedule(load_config(base), 1, 0)


# --- LR traces recorded by short runs ---------------------------------------------------------

@pytest.mark.slow
def test_lr_trace_in_epoch_mode_follows_the_formula(cityscapes_env, tmp_path):
    # 8 images / 2 per step = 4 iterations per epoch: 3 epochs = 12 iterations, step at epoch 2
    cfg = tiny_cfg(tmp_path, "CITYSCAPES_FT.SCHEDULE.UNIT", "epochs", "CITYSCAPES_FT.SCHEDULE.MAX_EPOCHS", "3",
                   "CITYSCAPES_FT.SCHEDULE.STEPS_EPOCHS", "(2,)", "SOLVER.WARMUP_ITERS", "4",
                   "SOLVER.CHECKPOINT_PERIOD", "100")
    train_in_process(cfg)
    trace = lr_trace(tmp_path)
    assert sorted(trace) == list(range(12))
    # 0, mid-warmup, end of warmup, either side of the step at 8
    for t in (0, 2, 3, 4, 7, 8, 11):
        assert trace[t] == pytest.approx(expected_lr(t, 0.005, 4, 0.001, [8]), rel=1e-9), t


@pytest.mark.slow
def test_layerwise_multipliers_scale_each_parts_lr_and_weight_decay_follows_kind(cityscapes_env, tmp_path):
    from cityscapes_ft.engine import CityscapesFTTrainer
    from cityscapes_ft.engine.optimizer import build_layerwise_optimizer

    cfg = tiny_cfg(tmp_path, "CITYSCAPES_FT.LR_MULTIPLIER.BACKBONE", "0.1", "CITYSCAPES_FT.LR_MULTIPLIER.FPN",
                   "0.5", "CITYSCAPES_FT.LR_MULTIPLIER.HEADS", "2.0", "SOLVER.WEIGHT_DECAY_BIAS", "0.0",
                   "SOLVER.WEIGHT_DECAY_NORM", "0.0", "MODEL.FPN.NORM", "GN", "SOLVER.MAX_ITER", "6",
                   "SOLVER.STEPS", "(4,)")
    model = CityscapesFTTrainer.build_model(cfg)
    optimizer = build_layerwise_optimizer(cfg, model)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(group_of) == len(trainable) == sum(len(g["params"]) for g in optimizer.param_groups)
    norm_names = {f"{m_name}.{n}" for m_name, m in model.named_modules() if isinstance(m, torch.nn.GroupNorm)
                  for n, _ in m.named_parameters(recurse=False)}
    assert norm_names
    for name, p in trainable:
        g = group_of[id(p)]
        part = "backbone" if is_backbone(name) else "fpn" if name.startswith("backbone.") else "heads"
        assert g["lr"] == pytest.approx(0.005 * {"backbone": 0.1, "fpn": 0.5, "heads": 2.0}[part]), name
        if name in norm_names or name.endswith(".bias"):
            assert g["weight_decay"] == 0.0, name
        else:
            assert g["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY, name
    train_in_process(cfg)
    trace = {k: lr_trace(tmp_path, k) for k in ("lr", "lr/backbone", "lr/fpn", "lr/heads")}
    for t in (0, 1, 3, 4, 5):
        lr = expected_lr(t, 0.005, 2, 0.001, [4])
        assert trace["lr"][t] == pytest.approx(lr, rel=1e-9)
        assert trace["lr/backbone"][t] == pytest.approx(0.1 * lr, rel=1e-9)
        assert trace["lr/fpn"][t] == pytest.approx(0.5 * lr, rel=1e-9)
        assert trace["lr/heads"][t] == pytest.approx(2.0 * lr, rel=1e-9)


# --- staged freezing --------------------------------------------------------------------------

@pytest.mark.slow
def test_frozen_backbone_gets_no_gradient_and_stays_bit_identical_then_trains(cityscapes_env, tmp_path):
    from detectron2.engine import HookBase

    from cityscapes_ft.engine import CityscapesFTTrainer

    cfg = tiny_cfg(tmp_path, "CITYSCAPES_FT.BACKBONE_FREEZE.ITERS", "3", "SOLVER.MAX_ITER", "5",
                   "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.STEPS", "(4,)")
    seen = {}

    class Probe(HookBase):
        def before_train(self):
            seen["initial"] = {n: p.detach().clone() for n, p in self.trainer.model.named_parameters()}

        def after_step(self):
            params = dict(self.trainer.model.named_parameters())
            seen[self.trainer.iter] = {
                "backbone_grads": [params[n].grad is not None for n in params if is_backbone(n)],
                "head_grads": [params[n].grad is not None for n in params if n.startswith("roi_heads.")],
            }

    trainer = CityscapesFTTrainer(cfg)
    trainer.register_hooks([Probe()])
    trainer.resume_or_load(resume=False)
    trainer.train()
    for it in (0, 1, 2):
        assert not any(seen[it]["backbone_grads"]), f"iteration {it}: backbone got gradients while frozen"
        assert all(seen[it]["head_grads"])
    for it in (3, 4):
        assert all(seen[it]["backbone_grads"]), f"iteration {it}: backbone not trained after the switch"
    initial = seen["initial"]
    frozen_end = load_model_state(tmp_path / "model_0000002.pth")
    after = load_model_state(tmp_path / "model_0000003.pth")
    backbone = [n for n in initial if is_backbone(n)]
    assert backbone
    for name in backbone:
        assert torch.equal(frozen_end[name], initial[name]), name
    assert sum(not torch.equal(after[n], frozen_end[n]) for n in backbone) > len(backbone) // 2
    heads = [n for n in initial if n.startswith("roi_heads.box_head")]
    assert all(not torch.equal(frozen_end[n], initial[n]) for n in heads)
    frozen_flags = lr_trace(tmp_path, "backbone_frozen")
    assert [frozen_flags[i] for i in range(5)] == [1, 1, 1, 0, 0]
    # the checkpoints record the phase, so --resume knows it too
    ckpt = torch.load(tmp_path / "model_0000001.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer"]["hooks"]["StagedBackboneFreeze"]["frozen"] is True


@pytest.mark.slow
def test_freezing_in_two_cpu_processes_with_world_size_scaling(synthetic_root, tmp_path):
    from cityscapes_ft.engine import CityscapesFTTrainer

    cfg = load_config(TINY)
    model = CityscapesFTTrainer.build_model(cfg)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"model": initial}, tmp_path / "init.pth")
    out = tmp_path / "out"
    # a recipe stated for 1 process: 8 iterations, warmup 4, step at 6, frozen 4; 2 processes halve
    # them (numbers typed on the command line would be used as given)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f'_BASE_: "{TINY}"\nSOLVER:\n  REFERENCE_WORLD_SIZE: 1\n  MAX_ITER: 8\n'
                      "  WARMUP_ITERS: 4\n  STEPS: (6,)\nCITYSCAPES_FT:\n  BACKBONE_FREEZE:\n    ITERS: 4\n")
    train_net("--num-gpus", "2", "--dist-url", "auto", "OUTPUT_DIR", str(out), "MODEL.WEIGHTS",
              str(tmp_path / "init.pth"), "SOLVER.CHECKPOINT_PERIOD", "1", "CITYSCAPES_FT.METRICS_PERIOD", "1",
              "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", config=str(recipe), datasets=synthetic_root)
    ran = load_config(str(out / "config.yaml"))
    assert (ran.SOLVER.IMS_PER_BATCH, ran.SOLVER.MAX_ITER, ran.CITYSCAPES_FT.BACKBONE_FREEZE.ITERS) == (4, 4, 2)
    trace = lr_trace(out)
    for t in range(4):
        assert trace[t] == pytest.approx(expected_lr(t, 0.01, 2, 0.001, [3]), rel=1e-9), t
    states = [load_model_state(out / f"model_000000{i}.pth") for i in range(4)]
    backbone = [n for n in initial if is_backbone(n) and initial[n].is_floating_point()]
    for i in (0, 1):
        for name in backbone:
            assert torch.equal(states[i][name], initial[name]), (i, name)
        assert not torch.equal(states[i]["roi_heads.box_predictor.cls_score.weight"],
                               initial["roi_heads.box_predictor.cls_score.weight"])
    assert sum(not torch.equal(states[2][n], states[1][n]) for n in backbone) > len(backbone) // 2
    log = open(out / "log.txt.rank1").read()
    assert "backbone frozen" in log and "backbone trains from iteration 2" in log


def _train_and_fingerprint(out_dir, datasets, cache_dir):
    """Run in each of two processes: train through the switch, then gather every rank's weights."""
    import hashlib

    from detectron2.utils import comm

    os.environ["DETECTRON2_DATASETS"] = datasets
    os.environ["CITYSCAPES_FT_CACHE_DIR"] = cache_dir
    cfg = tiny_cfg(out_dir, "SOLVER.MAX_ITER", "5", "SOLVER.STEPS", "(4,)", "SEED", "3",
                   "CITYSCAPES_FT.BACKBONE_FREEZE.ITERS", "2", "CITYSCAPES_FT.BACKBONE_FREEZE.INCLUDE_FPN", "True")
    trainer = train_in_process(cfg)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    prints = {n: hashlib.sha256(p.detach().numpy().tobytes()).hexdigest() for n, p in model.named_parameters()}
    gathered = comm.all_gather(prints)
    if comm.is_main_process():
        with open(os.path.join(out_dir, "fingerprints.json"), "w") as f:
            json.dump(gathered, f)


@pytest.mark.slow
def test_two_processes_hold_identical_weights_through_the_freeze_switch(synthetic_root, tmp_path):
    """DDP is re-wrapped at the switch: after it, gradients of the backbone and FPN must still be
    all-reduced, or the processes (each on its own images) would drift apart."""
    from cityscapes_ft.engine import launch

    launch(_train_and_fingerprint, 2, dist_url="auto",
           args=(str(tmp_path), synthetic_root, os.environ["CITYSCAPES_FT_CACHE_DIR"]))
    rank0, rank1 = json.load(open(tmp_path / "fingerprints.json"))
    assert rank0 == rank1
    final = load_model_state(tmp_path / "model_final.pth")
    frozen = load_model_state(tmp_path / "model_0000001.pth")
    assert not torch.equal(final["backbone.bottom_up.stem.conv1.weight"], frozen["backbone.bottom_up.stem.conv1.weight"])
    assert not torch.equal(final["backbone.fpn_lateral2.weight"], frozen["backbone.fpn_lateral2.weight"])


# --- gradient accumulation and AMP ------------------------------------------------------------

class _Regression(torch.nn.Module):
    """Mean squared error over the images of a batch: averaging losses like detectron2's."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))

    def forward(self, batch):
        x = torch.stack([d["x"] for d in batch])
        y = torch.stack([d["y"] for d in batch])
        return {"loss_mse": ((self.layer(x) - y) ** 2).mean()}


def _run_accumulation(batch_size, steps_per_update, updates=4):
    from detectron2.utils.events import EventStorage

    from cityscapes_ft.compat import write_step_metrics
    from cityscapes_ft.engine.train_loop import GradientAccumulationStep

    g = torch.Generator().manual_seed(1)
    samples = [{"x": torch.randn(6, generator=g), "y": torch.randn(1, generator=g)} for _ in range(64)]

    def batches():
        i = 0
        while True:
            yield samples[i:i + batch_size]
            i = (i + batch_size) % len(samples)

    model = _Regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    step, stream = GradientAccumulationStep(optimizer, accumulation_steps=steps_per_update), batches()
    with EventStorage(0) as storage:
        for it in range(updates):
            storage.iter = it
            losses, data_time = step.forward_backward(model, stream)
            write_step_metrics(losses, data_time, it)  # detectron2's loss records, as the trainer writes them
            step.optimizer_step()
    return model, storage


def test_gradient_accumulation_equals_the_large_batch_step():
    large, large_storage = _run_accumulation(batch_size=8, steps_per_update=1)
    accumulated, accumulated_storage = _run_accumulation(batch_size=2, steps_per_update=4)
    single, _ = _run_accumulation(batch_size=2, steps_per_update=1)
    for a, b in zip(large.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # and it is not trivially so: the small-batch run ends elsewhere
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(large.parameters(), single.parameters()))
    # the logged loss is the large batch's loss too
    assert accumulated_storage.history("total_loss").latest() == pytest.approx(
        large_storage.history("total_loss").latest(), rel=1e-5)


@pytest.mark.slow
def test_accumulation_in_the_trainer_splits_the_batch_and_counts_optimizer_steps(cityscapes_env, tmp_path):
    cfg = tiny_cfg(tmp_path, "CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS", "2", "SOLVER.MAX_ITER", "3",
                   "SOLVER.STEPS", "(2,)")
    trainer = train_in_process(cfg)
    assert trainer.data_loader.batch_size == 1
    assert trainer.data_loader.batches_consumed == 6  # 2 per optimizer step
    assert trainer.scheduler.last_epoch == 3  # the LR schedule advanced once per optimizer step
    assert sorted(lr_trace(tmp_path)) == [0, 1, 2]


@pytest.mark.slow
def test_amp_on_cpu_is_refused_with_the_fix(synthetic_root, tmp_path):
    proc = train_net("SOLVER.AMP.ENABLED", "True", "OUTPUT_DIR", str(tmp_path), datasets=synthetic_root,
                     expect_ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "SOLVER.AMP.ENABLED" in proc.stderr and "CUDA" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP needs CUDA")
def test_amp_with_accumulation_trains_on_cuda(cityscapes_env, tmp_path):
    cfg = tiny_cfg(tmp_path, "MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True",
                   "CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS", "2", "CITYSCAPES_FT.BACKBONE_FREEZE.ITERS", "2")
    train_in_process(cfg)
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer"]["_trainer"]["grad_scaler"]["scale"] > 0
    losses = [r["total_loss"] for r in read_metrics(tmp_path / "metrics.json") if "total_loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


# --- exact resume -----------------------------------------------------------------------------

def _resume_from(checkpoint, out_dir, cfg_opts):
    os.makedirs(out_dir)
    shutil.copy(checkpoint, out_dir)
    with open(os.path.join(out_dir, "last_checkpoint"), "w") as f:
        f.write(os.path.basename(checkpoint))
    return train_in_process(tiny_cfg(out_dir, *cfg_opts), resume=True)


REPEAT_FACTORS = ("DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", "0.5")


@pytest.mark.slow
@pytest.mark.parametrize("stop_after,accumulation,sampling", [(1, 1, ()), (4, 1, ()), (2, 2, ()), (3, 1, REPEAT_FACTORS)],
                         ids=["while-frozen", "after-unfreezing", "accumulating", "repeat-factor-sampling"])
def test_interrupted_and_resumed_run_ends_where_the_uninterrupted_one_does(cityscapes_env, tmp_path, stop_after,
                                                                            accumulation, sampling):
    opts = ["SOLVER.MAX_ITER", "7", "SOLVER.STEPS", "(5,)", "SOLVER.CHECKPOINT_PERIOD", "1",
            "CITYSCAPES_FT.BACKBONE_FREEZE.ITERS", "3", "SOLVER.MOMENTUM", "0.9",
            "CITYSCAPES_FT.GRADIENT_ACCUMULATION_STEPS", str(accumulation), *sampling]
    full = tmp_path / "uninterrupted"
    train_in_process(tiny_cfg(full, *opts))
    # what a run killed after iteration `stop_after` leaves: its last checkpoint
    resumed = tmp_path / "resumed"
    trainer = _resume_from(full / f"model_000000{stop_after}.pth", str(resumed), opts)
    assert trainer.start_iter == stop_after + 1
    a, b = load_model_state(full / "model_final.pth"), load_model_state(resumed / "model_final.pth")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-7, msg=name)
    # same LRs as the uninterrupted run from the resume point on
    full_metrics = {r["iteration"]: r for r in read_metrics(full / "metrics.json")}
    resumed_metrics = {r["iteration"]: r for r in read_metrics(resumed / "metrics.json")}
    for it in range(stop_after + 1, 7):
        assert resumed_metrics[it]["lr"] == full_metrics[it]["lr"]
    # and not because resuming is a no-op: the stream continued, it did not start over
    ckpt = torch.load(resumed / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer"]["data"]["batches_consumed"] == 7 * accumulation


@pytest.mark.slow
def test_kill_9_of_a_two_process_run_then_resume_ends_as_if_never_stopped(synthetic_root, tmp_path):
    """The launcher killed with SIGKILL takes its workers with it (orphans would train on and write
    checkpoints beside the resumed run); --resume in the frozen phase ends with the weights of an
    uninterrupted two-process run."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO, training_starts

    opts = ["--num-gpus", "2", "--dist-url", "auto", "CITYSCAPES_FT.SCHEDULE.UNIT", "epochs",
            "CITYSCAPES_FT.SCHEDULE.MAX_EPOCHS", "6", "CITYSCAPES_FT.SCHEDULE.STEPS_EPOCHS", "(5,)",
            "SOLVER.WARMUP_ITERS", "4", "SOLVER.CHECKPOINT_PERIOD", "1", "CITYSCAPES_FT.BACKBONE_FREEZE.EPOCHS", "3",
            "SOLVER.REFERENCE_WORLD_SIZE", "1", "SEED", "5", "DATASETS.TEST", "()"]
    reference, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    train_net(*opts, "OUTPUT_DIR", str(reference), datasets=synthetic_root)
    env = dict(os.environ, DETECTRON2_DATASETS=synthetic_root, OMP_NUM_THREADS="2")
    cmd = [sys.executable, os.path.join("tools", "train_net.py"), "--config-file", TINY] + opts
    # Started as `nohup ... &` starts it: SIGINT ignored, so torch's own parent-death SIGINT is too.
    proc = subprocess.Popen(cmd + ["OUTPUT_DIR", str(killed)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    def running(pids):  # those of `pids` still running (a zombie has ended)
        alive = set()
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rpartition(")")[2].split()[0] not in "ZX":
                        alive.add(pid)
            except FileNotFoundError:
                pass
        return alive

    def children():  # the launcher's spawned workers
        found = set()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if ppid == proc.pid and b"spawn_main" in f.read():
                        found.add(int(pid))
            except FileNotFoundError:
                pass
        return found

    try:
        deadline = time.time() + 300
        while not (killed / "model_0000002.pth").exists():
            assert proc.poll() is None and time.time() < deadline, "no checkpoint of iteration 2"
            time.sleep(0.02)
        workers = children()
        assert workers, "the launcher's workers were not found"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # the workers die with the launcher (orphans would train on beside the resumed run)
    deadline = time.time() + 60
    while running(workers) and time.time() < deadline:
        time.sleep(0.05)
    orphans = running(workers)
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "workers outlived the launcher"
    assert not (killed / "model_final.pth").exists()
    stopped_at = torch.load(killed / open(killed / "last_checkpoint").read().strip(), map_location="cpu",
                            weights_only=False)["iteration"]
    assert stopped_at < 5  # 12 iterations, frozen until 6: resumed inside the frozen phase
    train_net("--resume", *opts, "OUTPUT_DIR", str(killed), datasets=synthetic_root)
    assert training_starts(killed) == [0, stopped_at + 1]
    a, b = load_model_state(reference / "model_final.pth"), load_model_state(killed / "model_final.pth")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-7, msg=name)


def test_resumed_data_stream_continues_rather_than_restarts():
    from cityscapes_ft.data.resumable_loader import ResumableTrainLoader

    dicts = [{"file_name": f"{i}.png", "width": 4 if i % 3 else 2, "height": 3, "i": i} for i in range(10)]

    def mapper(d):
        import numpy as np

        return {"i": d["i"], "noise": float(np.random.rand())}

    def take(loader, n):
        it = iter(loader)
        return [[(d["i"], d["noise"]) for d in next(it)] for _ in range(n)]

    full = take(ResumableTrainLoader(dicts, mapper, batch_size=2, seed=5), 12)
    first = ResumableTrainLoader(dicts, mapper, batch_size=2, seed=5)
    head = take(first, 5)
    state = first.state_dict()
    second = ResumableTrainLoader(dicts, mapper, batch_size=2, seed=99, num_workers=2)
    second.load_state_dict(state)
    tail = take(second, 7)
    assert head + tail == full
    assert tail != full[:7]
    # batches never mix portrait and landscape images
    assert all(len({dicts[i]["width"] > 3 for i, _ in batch}) == 1 for batch in full)
    # two processes split the stream without overlap
    ranks = [take(ResumableTrainLoader(dicts, mapper, batch_size=1, seed=5, rank=r, world_size=2), 5)
             for r in (0, 1)]
    assert not {b[0][0] for b in ranks[0][:2]} & {b[0][0] for b in ranks[1][:2]}


def test_repeat_factor_stream_resumes_exactly_and_repeats_images_by_their_factor():
    from cityscapes_ft.data.resumable_loader import ResumableBatchSampler

    factors = [1.0, 1.0, 3.0, 1.5, 1.0, 1.0]
    groups = [True] * len(factors)

    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    full = take(ResumableBatchSampler(groups, 2, seed=3, rank=0, world_size=1, repeat_factors=factors), 400)
    resumed = take(ResumableBatchSampler(groups, 2, seed=3, rank=0, world_size=1, start_batch=150,
                                         repeat_factors=factors), 250)
    assert resumed == full[150:]
    counts = np.bincount([index for batch in full for _, index in batch], minlength=len(factors))
    # over ~100 passes: image 2 three times as often as image 0, image 3 one and a half times
    assert counts[2] / counts[0] == pytest.approx(3.0, rel=0.15)
    assert counts[3] / counts[0] == pytest.approx(1.5, rel=0.15)
    plain = take(ResumableBatchSampler(groups, 2, seed=3, rank=0, world_size=1), 400)
    assert np.ptp(np.bincount([i for b in plain for _, i in b])) <= 2  # without factors, every image equally


def lvis_repeat_factors(dicts, threshold):
    """The LVIS rule (Gupta et al. 2019, sec. 4), written out here: f(c) is the fraction of images
    holding an annotation of class c (a crowd group counts: a Cityscapes "cargroup" is annotated
    car), r(c) = max(1, sqrt(t / f(c))), and an image's factor is the largest r(c) of its classes."""
    classes = [{a["category_id"] for a in d["annotations"]} for d in dicts]
    images_with = {c: sum(c in cs for cs in classes) for c in set().union(*classes)}
    r = {c: max(1.0, math.sqrt(threshold / (n / len(dicts)))) for c, n in images_with.items()}
    return [max((r[c] for c in cs), default=1.0) for cs in classes]


def test_repeat_factors_follow_the_lvis_rule_and_favour_rare_classes(cityscapes_env):
    from cityscapes_ft.data import training_dataset_dicts, training_repeat_factors

    cfg = tiny_cfg("unused", *REPEAT_FACTORS)
    dicts = training_dataset_dicts(cfg)
    factors = training_repeat_factors(cfg, dicts)
    assert factors.tolist() == pytest.approx(lvis_repeat_factors(dicts, 0.5), rel=1e-6)
    assert factors.max() > 1.0 and factors.min() == 1.0
    assert training_repeat_factors(tiny_cfg("unused"), dicts) is None
    # per class: images with the class, and how many of them a pass draws on average
    from cityscapes_ft.data.train_dicts import training_class_counts

    names = MetadataCatalog.get("cityscapes_ft_instance_train").thing_classes
    once, repeated = training_class_counts(dicts, names), training_class_counts(dicts, names, factors)
    for c, (a, b) in enumerate(zip(once, repeated)):
        with_class = [f for d, f in zip(dicts, factors.tolist())
                      if any(x["category_id"] == c and not x["iscrowd"] for x in d["annotations"])]
        assert a["images"] == b["images"] == len(with_class) and a["images_per_pass"] == len(with_class)
        assert b["images_per_pass"] == pytest.approx(sum(with_class), abs=0.01)


def test_synthetic_rare_classes_are_rare_in_training_only(tmp_path):
    from cityscapes_ft.data.synthetic import make_synthetic_cityscapes, synthetic_dataset_matches

    root = str(tmp_path / "cityscapes")
    make_synthetic_cityscapes(root, 30, 30, 128, 64, seed=1, log=lambda *_: None, rare_train_classes=["train", "bus"],
                              rare_rate=0.1)
    assert synthetic_dataset_matches(root, num_train=30, num_val=30, width=128, height=64, seed=1,
                                     rare_train_classes=["train", "bus"], rare_rate=0.1)

    def images_with(split, label):
        files = glob.glob(os.path.join(root, "gtFine", split, "*", "*_polygons.json"))
        return sum(any(o["label"] == label for o in json.load(open(f))["objects"]) for f in files)

    for label in ("train", "bus"):
        assert images_with("train", label) <= 8 < images_with("val", label)
    assert images_with("train", "car") > 15


@pytest.mark.slow
def test_repeat_factor_comparison_trains_both_ways_and_reports_rare_classes(tmp_path):
    out = tmp_path / "compare"
    proc = run(["tools/compare_repeat_factor_sampling.py", "--config-file", TINY, "--output", str(out),
                "--iterations", "2", "--num-train", "6", "--num-val", "3", "--width", "256", "--height", "128",
                "--rare-classes", "bus,train", "--rare-rate", "0.2"], datasets="/nonexistent")
    result = json.load(open(out / "compare_repeat_factor_sampling.json"))
    assert set(result["runs"]) == {"TrainingSampler", "RepeatFactorTrainingSampler"}
    assert "repeat-factor sampling (threshold 0.3)" in open(out / "RepeatFactorTrainingSampler" / "log.txt").read()
    assert "each image once per pass" in open(out / "TrainingSampler" / "log.txt").read()
    for sampler, r in result["runs"].items():
        saved = json.load(open(glob.glob(str(out / sampler / "eval_results" / "*.json"))[0]))["results"]
        assert r["official_AP"] == saved["cityscapes"]["AP"]
        assert r["official_AP_rare"] == pytest.approx((saved["cityscapes"]["AP-bus"] + saved["cityscapes"]["AP-train"]) / 2,
                                                      nan_ok=True)
    assert "RepeatFactorTrainingSampler" in proc.stdout
