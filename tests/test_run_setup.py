"""Run set-up the Detectron2 way: typed values run as typed, one resolved config that reproduces
itself, torchrun and SLURM join one job, checkpoints of every normalisation, the best checkpoint's
score across --resume."""
import json
import os
import pickle
import socket
import subprocess
import sys

import pytest
import torch
from conftest import (CONFIGS, CS_FT_ON_CPU, REPO, TINY, load_config, resume_point, run, stop_when, train_net,
                      training_starts)

from cityscapes_ft.config import command_line_keys
from cityscapes_ft.engine.launch import find_process_place, first_slurm_host
from cityscapes_ft.utils import read_metrics
from cityscapes_ft.schedule import resolve_training_schedule

CS_FT = os.path.join(CONFIGS, "cs_ft.yaml")
PAPER_4K = os.path.join(CONFIGS, "cs_ft_paper_4k.yaml")
# cs_ft.yaml's model made CPU-test sized: a small GroupNorm ResNet learns from scratch without diverging.
SMALL_MODEL = ("MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
               "MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.RESNETS.NORM", "GN",
               "MODEL.BACKBONE.FREEZE_AT", "0")
HEAD_TRANSFER_MAP = '("person", "person", "car", "truck", "bus", "train", "motorcycle", "bicycle")'


def resolve(config, *opts, world=1, size=2975):
    return resolve_training_schedule(load_config(config, *opts), world, size,
                                     explicit=command_line_keys(opts))


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# --- the values you type are the values that run --------------------------------------------

def test_values_typed_on_the_command_line_run_as_typed_and_stopped_derivations_are_warned():
    cfg, schedule = resolve(CS_FT, "SOLVER.MAX_ITER", "100", "SOLVER.BASE_LR", "0.01",
                            "SOLVER.IMS_PER_BATCH", "2")
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR, cfg.SOLVER.IMS_PER_BATCH) == (100, 0.01, 2)
    assert tuple(cfg.SOLVER.STEPS) == ()  # the recipe's step, after 56 of 64 passes, is past the end
    notes = "\n".join(schedule.notes)
    # 64 passes over 2975 images at batch 2 would be 95200 iterations; LR 0.01 at batch 8 -> 0.0025
    assert "SOLVER.MAX_ITER 100 (set on the command line) is used as given; the recipe would give 95200" in notes
    assert "SOLVER.BASE_LR 0.01 (set on the command line) is used as given; the recipe would give 0.0025" in notes
    assert "are dropped, as detectron2 does" in notes and "longer than the run" in notes
    assert set(schedule.given) == {"SOLVER.MAX_ITER", "SOLVER.BASE_LR", "SOLVER.IMS_PER_BATCH"}


def test_another_batch_keeps_the_recipe_but_never_rescales_a_typed_number():
    cfg, _ = resolve(PAPER_4K, "SOLVER.IMS_PER_BATCH", "16", "SOLVER.MAX_ITER", "4000")
    assert cfg.SOLVER.MAX_ITER == 4000  # typed
    assert tuple(cfg.SOLVER.STEPS) == (1500,) and cfg.SOLVER.WARMUP_ITERS == 250  # recipe, at batch 16
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.02)
    cfg, _ = resolve(PAPER_4K, "SOLVER.IMS_PER_BATCH", "16")
    assert cfg.SOLVER.MAX_ITER == 2000  # the same images as 4000 at batch 8


def test_one_scaling_rule_whichever_file_of_the_base_chain_sets_a_value(tmp_path):
    """Config files state values for REFERENCE_IMS_PER_BATCH, rescaled to the run's batch; only the
    command line's values run as typed. A user's YAML on top of the recipe and the same values in
    one flat file resolve alike."""
    on_top = tmp_path / "my_run.yaml"
    on_top.write_text(f'_BASE_: "{CS_FT}"\nSOLVER:\n  MAX_ITER: 1000\n  BASE_LR: 0.01\n'
                      "CITYSCAPES_FT:\n  SCHEDULE:\n    UNIT: iterations\n")
    flat = tmp_path / "flat.yaml"
    recipe = load_config(str(on_top))
    recipe.defrost()
    flat.write_text(recipe.dump())
    typed = ("SOLVER.IMS_PER_BATCH", "16")
    for path in (on_top, flat):
        cfg, schedule = resolve(str(path), *typed)
        # stated for batch 8 (cs_ft.yaml's REFERENCE_IMS_PER_BATCH), run at 16: half the steps,
        # linear LR scaling; the recipe's warmup (500 at batch 8) the same way
        assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS) == (500, 250), path
        assert cfg.SOLVER.BASE_LR == pytest.approx(0.02), path
        assert set(schedule.given) == {"SOLVER.IMS_PER_BATCH"}
    # typed on the command line: as typed, whatever the batch
    cfg, schedule = resolve(str(on_top), *typed, "SOLVER.MAX_ITER", "1000", "SOLVER.BASE_LR", "0.01")
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR) == (1000, 0.01)
    assert "SOLVER.MAX_ITER 1000 (set on the command line) is used as given; the recipe would give 500" in schedule.notes


@pytest.mark.slow
def test_config_yaml_is_the_config_that_ran_and_reproduces_its_schedule(synthetic_root, tmp_path):
    out, again = str(tmp_path / "run"), str(tmp_path / "again")
    typed = ("SOLVER.MAX_ITER", "6", "SOLVER.BASE_LR", "0.01", "SOLVER.IMS_PER_BATCH", "2")
    proc = train_net(*CS_FT_ON_CPU, *SMALL_MODEL, *typed, "DATASETS.TEST", "()", "OUTPUT_DIR", out,
                     config=CS_FT, datasets=synthetic_root)
    assert "WARNING" in proc.stderr + proc.stdout and "is used as given" in proc.stderr + proc.stdout
    metrics = [r for r in read_metrics(os.path.join(out, "metrics.json")) if "lr" in r]
    assert [r["iteration"] for r in metrics] == list(range(6))
    # warmup (the recipe's, longer than the run) rises over the whole run to the typed BASE_LR,
    # as detectron2's WarmupParamScheduler does: factor 0.001 at the start, 1 at the end
    for r in metrics:
        t = r["iteration"] / 6
        assert r["lr"] == pytest.approx(0.01 * (0.001 * (1 - t) + t), rel=1e-6)
    ran = load_config(os.path.join(out, "config.yaml"))
    assert (ran.SOLVER.MAX_ITER, ran.SOLVER.BASE_LR, tuple(ran.SOLVER.STEPS)) == (6, 0.01, ())
    # the one description of the run: resolved (iterations at its own batch), nothing beside it
    assert ran.CITYSCAPES_FT.SCHEDULE.UNIT == "iterations"
    assert ran.CITYSCAPES_FT.SCHEDULE.REFERENCE_IMS_PER_BATCH == ran.SOLVER.IMS_PER_BATCH == 2
    assert not any(os.path.exists(os.path.join(out, n)) for n in ("schedule.json", "config_given.yaml"))
    # fed back with --config-file, config.yaml runs the same config
    train_net("DATASETS.TEST", "()", "OUTPUT_DIR", again, config=os.path.join(out, "config.yaml"),
              datasets=synthetic_root)
    second = load_config(os.path.join(again, "config.yaml"))
    second.defrost()
    second.OUTPUT_DIR = ran.OUTPUT_DIR
    assert second.dump() == ran.dump()
    assert [r["lr"] for r in read_metrics(os.path.join(again, "metrics.json")) if "lr" in r] == [r["lr"] for r in metrics]


@pytest.mark.slow
def test_every_config_check_happens_before_training(synthetic_root, tmp_path):
    proc = train_net("CITYSCAPES_FT.EVAL_TASKS", '("cityscapes", "box")', "OUTPUT_DIR", str(tmp_path),
                     datasets=synthetic_root, expect_ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "CITYSCAPES_FT.EVAL_TASKS" in proc.stderr and "'box'" in proc.stderr
    assert not os.path.exists(tmp_path / "metrics.json")


# --- launchers: --num-gpus, torchrun, SLURM ---------------------------------------------------

def test_torchrun_and_slurm_places_are_read_from_their_environment():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                "GROUP_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "29500"}
    place = find_process_place(torchrun)
    assert (place.launcher, place.rank, place.world_size, place.local_rank, place.local_size,
            place.machine_rank, place.init_method) == ("torchrun", 3, 4, 1, 2, 1, "env://")
    slurm = {"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
             "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "1234"}
    place = find_process_place(slurm)
    assert (place.launcher, place.rank, place.world_size, place.local_rank, place.local_size,
            place.machine_rank) == ("SLURM", 2, 4, 0, 2, 1)
    assert place.init_method == "tcp://gpu07:21234"
    assert find_process_place(dict(slurm, MASTER_PORT="5000")).init_method == "tcp://gpu07:5000"
    assert find_process_place({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # one task: we spawn
    assert find_process_place({}) is None
    assert first_slurm_host("node01") == "node01"
    assert first_slurm_host("a[3-5,9]-ib,b1") == "a3-ib"
    assert first_slurm_host("c[010,012]") == "c010"


@pytest.mark.slow
def test_torchrun_with_num_gpus_is_refused_in_one_line(synthetic_root, tmp_path):
    proc = train_net("--num-gpus", "2", "OUTPUT_DIR", str(tmp_path), datasets=synthetic_root,
                     expect_ok=False, env={"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error")]
    assert "torchrun" in line and "--num-gpus 2" in line


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TWO_PROCESS_RUN = ("SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2", "SEED", "11",
                   "DATASETS.TEST", "()")


@pytest.fixture(scope="module")
def num_gpus_2_run(synthetic_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("num_gpus_2"))
    train_net("--num-gpus", "2", "--dist-url", "auto", *TWO_PROCESS_RUN, "OUTPUT_DIR", out,
              datasets=synthetic_root)
    return out


def _assert_one_job_of_two(out, reference):
    assert "Rank of current process: 0. World size: 2" in open(os.path.join(out, "log.txt")).read()
    iterations = [r["iteration"] for r in read_metrics(os.path.join(out, "metrics.json")) if "lr" in r]
    assert iterations == [0, 1, 2]  # one writer: each iteration once
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == ["model_0000001.pth", "model_final.pth"]
    assert_same_weights(os.path.join(out, "model_final.pth"), os.path.join(reference, "model_final.pth"))


@pytest.mark.slow
def test_torchrun_starts_one_job_equal_to_num_gpus(num_gpus_2_run, synthetic_root, tmp_path):
    out = str(tmp_path)
    run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         os.path.join("tools", "train_net.py"), "--config-file", TINY, *TWO_PROCESS_RUN, "OUTPUT_DIR", out],
        datasets=synthetic_root)
    _assert_one_job_of_two(out, num_gpus_2_run)


@pytest.mark.slow
def test_slurm_tasks_join_one_job_equal_to_num_gpus(num_gpus_2_run, synthetic_root, tmp_path):
    out = str(tmp_path)
    env = dict(os.environ, DETECTRON2_DATASETS=synthetic_root, OMP_NUM_THREADS="1", SLURM_NTASKS="2",
               SLURM_NTASKS_PER_NODE="2", SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID="7",
               SLURM_NODEID="0", MASTER_PORT=str(_free_port()))
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.join("tools", "train_net.py"), "--config-file", TINY,
             *TWO_PROCESS_RUN, "OUTPUT_DIR", out],
            cwd=REPO, env=dict(env, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in range(2)
    ]
    for p in procs:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == 0, output[-3000:]
    _assert_one_job_of_two(out, num_gpus_2_run)


# --- checkpoints of every normalisation, with and without head transfer ----------------------

def _coco_stand_in(path, norm, *opts):
    """A model-zoo style .pkl (numpy arrays, matching_heuristics) of an 80-class model with
    `norm` in its backbone, BatchNorm's 0-d num_batches_tracked included."""
    from detectron2.modeling import build_model

    cfg = load_config(TINY, "MODEL.RESNETS.NORM", norm, "MODEL.ROI_HEADS.NUM_CLASSES", "80", *opts)
    state = {k: v.detach().numpy() for k, v in build_model(cfg).state_dict().items()}
    assert norm not in ("BN", "SyncBN") or any(v.ndim == 0 for v in state.values())
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "stand-in", "matching_heuristics": True}, f)


def _train_net_in_process(*argv):
    from cityscapes_ft.engine import argument_parser, train_or_evaluate

    return train_or_evaluate(argument_parser().parse_args(["--config-file", TINY, *argv]))


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["FrozenBN", "BN", "SyncBN", "GN"])
@pytest.mark.parametrize("head_transfer", [True, False])
def test_checkpoints_of_every_normalisation_load_resume_and_evaluate(norm, head_transfer, cityscapes_env,
                                                                   tmp_path):
    stand_in = str(tmp_path / "coco.pkl")
    _coco_stand_in(stand_in, norm)
    out = str(tmp_path / "run")
    common = ["MODEL.RESNETS.NORM", norm, "OUTPUT_DIR", out, "SOLVER.CHECKPOINT_PERIOD", "1",
              "MODEL.HEAD_TRANSFER.CLASS_MAP", HEAD_TRANSFER_MAP if head_transfer else "()"]
    _train_net_in_process(*common, "MODEL.WEIGHTS", stand_in, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()")
    _train_net_in_process("--resume", *common, "MODEL.WEIGHTS", stand_in, "SOLVER.MAX_ITER", "3",
                          "DATASETS.TEST", "()")
    assert training_starts(out) == [0, 2]  # resumed after iteration 1
    final = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert final["iteration"] == 2
    if norm == "BN":  # trained BatchNorm statistics moved, and travel in the checkpoint
        assert int(final["model"]["backbone.bottom_up.stem.conv1.norm.num_batches_tracked"]) == 3
    results = _train_net_in_process("--eval-only", *common, "MODEL.WEIGHTS",
                                     os.path.join(out, "model_final.pth"))
    assert set(results) == {"cityscapes", "bbox", "segm"}


def test_cascade_checkpoint_transfers_the_classifier_of_every_stage(tmp_path):
    from detectron2.modeling import build_model

    from cityscapes_ft.checkpoint import build_checkpointer

    cascade = ("MODEL.ROI_HEADS.NAME", "CascadeROIHeads", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True")
    stand_in = str(tmp_path / "cascade_coco.pkl")
    _coco_stand_in(stand_in, "GN", *cascade)  # the tiny config's norm
    cfg = load_config(TINY, *cascade, "MODEL.HEAD_TRANSFER.CLASS_MAP", HEAD_TRANSFER_MAP)
    checkpointer = build_checkpointer(cfg, build_model(cfg))
    checkpointer.load(stand_in)
    report = checkpointer.last_load_report
    assert {f"roi_heads.box_predictor.{stage}.cls_score.weight" for stage in range(3)} <= set(report.transferred)
    assert report.fresh == [] and report.unused == []


@pytest.mark.slow
def test_bn_model_trained_killed_resumed_then_evaluated_with_head_transfer(synthetic_root, tmp_path):
    stand_in = str(tmp_path / "coco.pkl")
    _coco_stand_in(stand_in, "BN")
    out = tmp_path / "run"
    common = ("MODEL.RESNETS.NORM", "BN", "MODEL.HEAD_TRANSFER.CLASS_MAP", HEAD_TRANSFER_MAP,
              "MODEL.WEIGHTS", stand_in, "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.MAX_ITER", "6",
              "DATASETS.TEST", "()", "OUTPUT_DIR", str(out))
    env = dict(os.environ, DETECTRON2_DATASETS=synthetic_root, OMP_NUM_THREADS="2")
    proc = subprocess.Popen([sys.executable, os.path.join("tools", "train_net.py"), "--config-file", TINY,
                             *common], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tag = out / "last_checkpoint"
    try:  # killed in the step after the checkpoint of iteration 2 is tagged
        stop_when(proc, lambda: tag.exists() and tag.read_text() >= "model_0000002.pth")
    finally:
        proc.kill()
        proc.wait()
    restart = resume_point(out)
    assert 3 <= restart < 6 and not (out / "model_final.pth").exists()
    train_net("--resume", *common, datasets=synthetic_root)
    assert training_starts(out) == [0, restart]
    final = torch.load(out / "model_final.pth", weights_only=False)
    assert final["iteration"] == 5
    # each of the 6 steps moved the BatchNorm statistics once: those before the kill came with the
    # checkpoint (a resume that lost them, or repeated steps, would count otherwise)
    assert int(final["model"]["backbone.bottom_up.stem.conv1.norm.num_batches_tracked"]) == 6
    proc = train_net("--eval-only", "MODEL.RESNETS.NORM", "BN", "MODEL.HEAD_TRANSFER.CLASS_MAP",
                     HEAD_TRANSFER_MAP, "MODEL.WEIGHTS", str(out / "model_final.pth"),
                     "OUTPUT_DIR", str(tmp_path / "eval"), datasets=synthetic_root)
    assert "Official Cityscapes instance-level metric" in proc.stdout + proc.stderr


# --- hooks holding their state -----------------------------------------------------------------

@pytest.mark.slow
def test_the_best_checkpoints_score_survives_resume(cityscapes_env, tmp_path):
    from detectron2.utils.events import EventStorage

    from cityscapes_ft.engine import CityscapesFTTrainer
    from cityscapes_ft.engine.trainer import BestCheckpointerWithState

    out = str(tmp_path)
    _train_net_in_process("SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "2", "SOLVER.CHECKPOINT_PERIOD", "2",
                          "OUTPUT_DIR", out)
    # evaluation runs before the checkpoint of its iteration: the checkpoint holds its score
    evaluated = json.load(open(os.path.join(out, "eval_results", "cityscapes_ft_instance_val_iter0000002.json")))
    assert evaluated["checkpoint"].endswith("model_0000001.pth")
    saved = torch.load(os.path.join(out, "model_0000001.pth"), weights_only=False)["trainer"]["hooks"]
    assert saved["BestCheckpointerWithState"] == {
        "best_metric": evaluated["results"]["cityscapes"]["AP"], "best_iter": 1}

    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    best_file = os.path.join(out, "model_best.pth")
    before = open(best_file, "rb").read()
    cfg = load_config(os.path.join(out, "config.yaml"))
    trainer = CityscapesFTTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2  # after model_0000001.pth, which last_checkpoint names
    (hook,) = [h for h in trainer._hooks if isinstance(h, BestCheckpointerWithState)]
    assert hook.best_metric == evaluated["results"]["cityscapes"]["AP"] and hook.best_iter == 1
    with EventStorage(3) as trainer.storage:
        trainer.storage.put_scalar("cityscapes/AP", hook.best_metric - 1.0)  # a worse model
        hook._best_checking()
    assert open(best_file, "rb").read() == before


def test_training_a_frozen_bn_backbone_from_scratch_is_warned_about_before_it_diverges():
    from cityscapes_ft.checks import config_warnings

    (warning,) = config_warnings(load_config(CS_FT, *CS_FT_ON_CPU), training=True)
    assert "FrozenBN" in warning and "MODEL.RESNETS.NORM GN" in warning
    assert config_warnings(load_config(CS_FT, *CS_FT_ON_CPU, *SMALL_MODEL), training=True) == []
    assert config_warnings(load_config(CS_FT, *CS_FT_ON_CPU), training=False) == []
