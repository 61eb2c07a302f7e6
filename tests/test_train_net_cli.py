"""The command line, end to end, on tiny synthetic data: train -> checkpoint -> --eval-only ->
metrics; --resume; two CPU processes; the main job."""
import glob
import json
import os

import pytest
import torch
from conftest import CONFIGS, REPO, run, train_net

pytestmark = pytest.mark.slow  # every test here trains or starts processes

def test_training_writes_checkpoints_with_optimizer_scheduler_and_iteration(trained):
    out, _ = trained
    assert open(os.path.join(out, "last_checkpoint")).read().strip() == "model_final.pth"
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 3
    assert "roi_heads.mask_head.predictor.weight" in ckpt["model"]
    optimizer = ckpt["trainer"]["_trainer"]["optimizer"]
    assert optimizer["state"], "SGD momentum buffers must be in the checkpoint"
    assert any("momentum_buffer" in s for s in optimizer["state"].values())
    assert ckpt["trainer"]["hooks"]["LayerwiseLRScheduler"]["last_epoch"] == 4
    for name in ("model_0000001.pth", "model_0000003.pth", "config.yaml", "metrics.json"):
        assert os.path.isfile(os.path.join(out, name)), name


def test_evaluation_during_training_writes_json_with_iteration_and_checkpoint(trained):
    out, proc = trained
    path = os.path.join(out, "eval_results", "cityscapes_ft_instance_val_iter0000004.json")
    data = json.load(open(path))
    assert data["dataset"] == "cityscapes_ft_instance_val" and data["iteration"] == 4
    assert data["checkpoint"].endswith("model_final.pth")
    assert set(data["results"]) == {"cityscapes", "bbox", "segm"}
    assert {"AP", "AP50", "AP-person", "AP50-bicycle"} <= set(data["results"]["cityscapes"])
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-rider"} <= set(data["results"]["segm"])


def test_eval_only_reports_official_and_coco_ap(trained, synthetic_root, tmp_path):
    out, _ = trained
    proc = train_net("--eval-only", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
                     "OUTPUT_DIR", str(tmp_path), datasets=synthetic_root)
    log = proc.stdout + proc.stderr
    assert "Official Cityscapes instance-level metric" in log
    assert "COCO-style box AP" in log and "COCO-style mask AP" in log
    assert "copypaste: Task: cityscapes" in log
    (path,) = glob.glob(str(tmp_path / "eval_results" / "*.json"))
    data = json.load(open(path))
    assert data["iteration"] == 4 and data["checkpoint"].endswith("model_final.pth")
    assert set(data["results"]) == {"cityscapes", "bbox", "segm"}
    # nothing written outside the output directory
    assert not os.path.exists(os.path.join(REPO, "matches.json"))


def test_resume_continues_where_the_run_stopped(trained, synthetic_root, tmp_path):
    out, _ = trained
    resumed = str(tmp_path / "resumed")
    os.makedirs(resumed)
    for name in ("model_0000003.pth", "last_checkpoint"):
        src = os.path.join(out, name)
        open(os.path.join(resumed, name), "wb").write(open(src, "rb").read())
    with open(os.path.join(resumed, "last_checkpoint"), "w") as f:
        f.write("model_0000003.pth")
    proc = train_net("--resume", "OUTPUT_DIR", resumed, "SOLVER.MAX_ITER", "6", datasets=synthetic_root)
    log = proc.stdout + proc.stderr
    assert "Starting training from iteration 4" in log
    assert "Loading scheduler from state_dict" in log
    ckpt = torch.load(os.path.join(resumed, "model_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 5
    assert ckpt["trainer"]["hooks"]["LayerwiseLRScheduler"]["last_epoch"] == 6


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
    schedule = json.load(open(tmp_path / "schedule.json"))
    assert schedule["max_iter"] == 3 and schedule["steps"] == []


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


def test_periodic_evaluation_keeps_the_best_checkpoint(synthetic_root, tmp_path):
    proc = train_net("OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "2",
                     "CITYSCAPES_FT.BEST_CHECKPOINT_METRIC", "segm/AP50", datasets=synthetic_root)
    evals = sorted(os.listdir(tmp_path / "eval_results"))
    assert evals == ["cityscapes_ft_instance_val_iter0000002.json", "cityscapes_ft_instance_val_iter0000004.json"]
    values = [json.load(open(tmp_path / "eval_results" / e))["results"]["segm"]["AP50"] for e in evals]
    best = torch.load(tmp_path / "model_best.pth", map_location="cpu", weights_only=False)
    # the iteration saved is the first evaluation that reached the best value
    assert best["iteration"] == (1 if values[0] >= values[1] else 4)  # detectron2 counts the end as 4
    assert "model_best" in proc.stdout + proc.stderr + open(tmp_path / "log.txt").read()
    assert open(tmp_path / "last_checkpoint").read().strip() == "model_final.pth"  # --resume unaffected
