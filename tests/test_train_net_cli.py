"""The command line, end to end, on tiny synthetic data: train -> checkpoint -> --eval-only ->
metrics; --resume; two CPU processes; the main job."""
import glob
import json
import os
import re
import shutil

import pytest
import torch
from conftest import (CONFIGS, FIXTURE, FIXTURE_EVAL_PERIOD, FIXTURE_MAX_ITER, REPO, assert_far_from_0_and_100,
                      evaluation_of, load_config, run, train_net)

pytestmark = pytest.mark.slow  # every test here trains or starts processes

def test_training_writes_checkpoints_with_optimizer_scheduler_and_iteration(trained):
    out, _ = trained
    assert open(os.path.join(out, "last_checkpoint")).read().strip() == "model_final.pth"
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == FIXTURE_MAX_ITER - 1
    assert "roi_heads.mask_head.predictor.weight" in ckpt["model"]
    optimizer = ckpt["trainer"]["_trainer"]["optimizer"]
    assert optimizer["state"], "SGD momentum buffers must be in the checkpoint"
    assert any("momentum_buffer" in s for s in optimizer["state"].values())
    assert ckpt["trainer"]["hooks"]["LayerwiseLRScheduler"]["last_epoch"] == FIXTURE_MAX_ITER
    # the periodic checkpoints (CHECKPOINT_PERIOD is EVAL_PERIOD), named by their 0-based iteration
    periodic = [f"model_{i - 1:07d}.pth" for i in (FIXTURE_EVAL_PERIOD, FIXTURE_MAX_ITER)]
    for name in periodic + ["config.yaml", "metrics.json"]:
        assert os.path.isfile(os.path.join(out, name)), name


def test_evaluation_during_training_writes_json_with_iteration_and_checkpoint(trained):
    out, proc = trained
    halfway = evaluation_of(out, FIXTURE_EVAL_PERIOD)
    assert halfway["iteration"] == FIXTURE_EVAL_PERIOD
    assert halfway["checkpoint"].endswith(f"model_{FIXTURE_EVAL_PERIOD - 1:07d}.pth")
    data = evaluation_of(out, FIXTURE_MAX_ITER)
    assert data["dataset"] == "cityscapes_ft_instance_val" and data["iteration"] == FIXTURE_MAX_ITER
    assert data["checkpoint"].endswith("model_final.pth")
    assert set(data["results"]) == {"cityscapes", "bbox", "segm"}
    assert {"AP", "AP50", "AP-person", "AP50-bicycle"} <= set(data["results"]["cityscapes"])
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-rider"} <= set(data["results"]["segm"])


def test_eval_only_reports_official_and_coco_ap(trained, synthetic_root, tmp_path):
    """--eval-only on the trained run's final weights, with its config: the numbers its own
    evaluation at the end of training found."""
    out, _ = trained
    shutil.copy(os.path.join(out, "config.yaml"), tmp_path / "config.yaml")  # a run's folder
    proc = train_net("--eval-only", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
                     "OUTPUT_DIR", str(tmp_path), config=FIXTURE, datasets=synthetic_root)
    # the run's config.yaml stays the description of its training; the evaluation's goes beside it
    assert (tmp_path / "config.yaml").read_bytes() == open(os.path.join(out, "config.yaml"), "rb").read()
    assert "model_final.pth" in (tmp_path / "config_eval.yaml").read_text()
    assert not (tmp_path / "config.yaml.kept").exists()
    log = proc.stdout + proc.stderr
    assert "Official Cityscapes instance-level metric" in log
    assert "COCO-style box AP" in log and "COCO-style mask AP" in log
    assert "copypaste: Task: cityscapes" in log
    (path,) = glob.glob(str(tmp_path / "eval_results" / "*.json"))
    data = json.load(open(path))
    assert data["iteration"] == FIXTURE_MAX_ITER and data["checkpoint"].endswith("model_final.pth")
    assert set(data["results"]) == {"cityscapes", "bbox", "segm"}
    during_training = evaluation_of(out, FIXTURE_MAX_ITER)["results"]
    assert_far_from_0_and_100(*(during_training[task]["AP"] for task in ("cityscapes", "bbox", "segm")))
    assert data["results"] == during_training
    # nothing written outside the output directory
    assert not os.path.exists(os.path.join(REPO, "matches.json"))


def test_resume_continues_where_the_run_stopped(trained, synthetic_root, tmp_path):
    out, _ = trained
    resumed = str(tmp_path / "resumed")
    os.makedirs(resumed)
    last = f"model_{FIXTURE_MAX_ITER - 1:07d}.pth"  # the periodic checkpoint of the last iteration
    shutil.copy(os.path.join(out, last), resumed)
    with open(os.path.join(resumed, "last_checkpoint"), "w") as f:
        f.write(last)
    proc = train_net("--resume", "OUTPUT_DIR", resumed, "SOLVER.MAX_ITER", str(FIXTURE_MAX_ITER + 2),
                     "TEST.EVAL_PERIOD", "0", config=FIXTURE, datasets=synthetic_root)
    log = proc.stdout + proc.stderr
    assert f"Starting training from iteration {FIXTURE_MAX_ITER}" in log
    assert "Loading scheduler from state_dict" in log
    ckpt = torch.load(os.path.join(resumed, "model_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == FIXTURE_MAX_ITER + 1
    assert ckpt["trainer"]["hooks"]["LayerwiseLRScheduler"]["last_epoch"] == FIXTURE_MAX_ITER + 2


def test_two_cpu_processes_train_together(synthetic_root, tmp_path):
    proc = train_net("--num-gpus", "2", "--dist-url", "auto", "OUTPUT_DIR", str(tmp_path),
                     "SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "0", datasets=synthetic_root)
    log = proc.stdout + proc.stderr
    assert "starting 2 CPU processes" in log
    assert "World size: 2" in open(tmp_path / "log.txt").read()
    assert "Rank of current process: 1. World size: 2" in open(tmp_path / "log.txt.rank1").read()
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 3
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved without the DDP wrapper
    # each process ran inference on half of val; the evaluator refuses to score a partial set, so
    # a results file means the predictions of both processes were gathered
    data = json.load(open(tmp_path / "eval_results" / "cityscapes_ft_instance_val_iter0000004.json"))
    assert set(data["results"]) == {"cityscapes", "bbox", "segm"}
    assert "Start inference on 3 batches" in open(tmp_path / "log.txt").read()


def test_missing_dataset_is_one_clear_message(tmp_path):
    proc = train_net("OUTPUT_DIR", str(tmp_path / "out"), datasets=str(tmp_path), expect_ok=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert os.path.join(str(tmp_path), "cityscapes", "leftImg8bit", "train") in proc.stderr
    assert "DETECTRON2_DATASETS" in proc.stderr


def test_missing_weights_file_is_one_clear_message(synthetic_root, tmp_path):
    proc = train_net("--eval-only", "MODEL.WEIGHTS", str(tmp_path / "nope.pkl"),
                     "OUTPUT_DIR", str(tmp_path), datasets=synthetic_root, expect_ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nope.pkl" in proc.stderr and "does not exist" in proc.stderr


def test_lr_step_past_the_end_is_dropped_with_a_warning_as_detectron2_does(synthetic_root, tmp_path):
    # the tiny config steps at 3; a typed SOLVER.MAX_ITER 3 ends before it
    proc = train_net("OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()",
                     datasets=synthetic_root)
    assert "SOLVER.STEPS (3,) are not before the run's end (SOLVER.MAX_ITER 3) and are dropped" in proc.stdout + proc.stderr
    ran = load_config(str(tmp_path / "config.yaml"))
    assert ran.SOLVER.MAX_ITER == 3 and tuple(ran.SOLVER.STEPS) == ()


def test_cuda_config_without_cuda_says_what_to_do(synthetic_root, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run([os.path.join("tools", "train_net.py"), "--config-file", os.path.join(CONFIGS, "cs_ft.yaml"),
                "OUTPUT_DIR", str(tmp_path)], synthetic_root, expect_ok=False)
    assert proc.returncode == 2 and "MODEL.DEVICE cpu" in proc.stderr


def test_main_job_on_its_default_path_makes_data_trains_evaluates_and_draws(tmp_path):
    out = tmp_path / "out"
    proc = run(
        [os.path.join("tools", "run_synthetic_demo.py"), "--data-root", str(tmp_path / "data"),
         "--num-train", "4", "--num-val", "3", "--width", "256", "--height", "128",
         "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(2,)", "OUTPUT_DIR", str(out)],
        datasets="/nonexistent",
    )
    assert os.path.isfile(tmp_path / "data" / "cityscapes" / "SYNTHETIC.json")
    assert "[demo] done" in proc.stdout and "official Cityscapes mask AP" in proc.stdout
    (path,) = glob.glob(str(out / "eval_results" / "*.json"))
    assert json.load(open(path))["iteration"] == 4
    pictures = sorted(glob.glob(str(out / "predictions" / "*_pred_vs_gt.png")))
    assert len(pictures) == 3
    # the summary the README's numbers are kept in: the evaluation's own numbers, and what made them
    summary = json.load(open(out / "demo_results.json"))
    assert summary["results"] == json.load(open(path))["results"]
    assert summary["official"]["AP"] == summary["results"]["cityscapes"]["AP"] and summary["iterations"] == 4
    assert summary["seed"] == 7 and summary["data"]["num_train"] == 4
    # second run reuses the data
    proc = run(
        [os.path.join("tools", "run_synthetic_demo.py"), "--data-root", str(tmp_path / "data"),
         "--num-train", "4", "--num-val", "3", "--width", "256", "--height", "128",
         "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(2,)", "OUTPUT_DIR", str(out)],
        datasets="/nonexistent",
    )
    assert "using the synthetic dataset" in proc.stdout


def test_periodic_evaluation_keeps_the_best_checkpoint(trained, synthetic_root, tmp_path):
    """model_best.pth follows CITYSCAPES_FT.BEST_CHECKPOINT_METRIC (official AP): the trained run's
    evaluation at its end, better than the one halfway, replaced it; a resumed run's worse
    evaluation leaves it, compared with the best score the run had reached."""
    out, _ = trained
    first, last = (evaluation_of(out, i)["results"]["cityscapes"]["AP"]
                   for i in (FIXTURE_EVAL_PERIOD, FIXTURE_MAX_ITER))
    assert first < last, (first, last)  # the seeded run learns: its second evaluation is the better
    log = open(os.path.join(out, "log.txt")).read()
    # detectron2 records a periodic evaluation at the iteration it follows (0-based), the end at MAX_ITER
    assert f"Saved first model at {first:0.5f} @ {FIXTURE_EVAL_PERIOD - 1} steps" in log
    assert re.search(f"Saved best model as latest eval score for cityscapes/AP is ?{last:0.5f}, "  # v0.6: "is19.5"
                     f"better than last best score {first:0.5f} @ iteration {FIXTURE_EVAL_PERIOD - 1}", log)
    best = torch.load(os.path.join(out, "model_best.pth"), map_location="cpu", weights_only=False)
    final = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert best["iteration"] == FIXTURE_MAX_ITER
    assert best["model"].keys() == final["model"].keys()
    assert all(torch.equal(best["model"][k], final["model"][k]) for k in final["model"])
    assert open(os.path.join(out, "last_checkpoint")).read().strip() == "model_final.pth"  # --resume unaffected

    # A worse model: the final checkpoint with its classifier's logits negated (background and the
    # wrong classes rank first), resumed for one iteration and evaluated at its end.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("weight", "bias"):
        final["model"][f"roi_heads.box_predictor.cls_score.{name}"] *= -1
    torch.save(final, resumed / "model_final.pth")
    (resumed / "last_checkpoint").write_text("model_final.pth")
    shutil.copy(os.path.join(out, "model_best.pth"), resumed)
    kept = (resumed / "model_best.pth").read_bytes()
    train_net("--resume", "OUTPUT_DIR", str(resumed), "SOLVER.MAX_ITER", str(FIXTURE_MAX_ITER + 1), config=FIXTURE,
              datasets=synthetic_root)
    worse = evaluation_of(str(resumed), FIXTURE_MAX_ITER + 1)["results"]["cityscapes"]["AP"]
    assert worse < last, (worse, last)
    assert (resumed / "model_best.pth").read_bytes() == kept
    # compared with the finished run's best, the one model_best.pth holds (a stale best score, from
    # before the evaluation at the end, would let a model worse than model_best.pth replace it)
    assert (f"Not saving as latest eval score for cityscapes/AP is {worse:0.5f}, not better than best score "
            f"{last:0.5f} @ iteration {FIXTURE_MAX_ITER}.") in (resumed / "log.txt").read_text()
