"""tools/gpu_check.py --dry-run: every step of the GPU check runs on CPU at tiny sizes and lands in
one gpu_check.json (on the GPU machine the same code runs at full size on CUDA)."""
import json
import os

import pytest
from conftest import detectron2_cityscapes_evaluator_works, run


@pytest.mark.slow
def test_dry_run_measures_every_step_into_one_json(tmp_path):
    out = tmp_path / "gpu_check"
    reference_works = detectron2_cityscapes_evaluator_works()
    run(["tools/gpu_check.py", "--output", str(out), "--dry-run"], datasets=str(tmp_path), timeout=900,
        expect_ok=reference_works)
    result = json.load(open(out / "gpu_check.json"))
    steps = result["steps"]
    # the evaluation step's reference is detectron2's own Cityscapes evaluator (broken upstream, #5436)
    assert result["dry_run"] is True and result["failed_steps"] == ([] if reference_works else ["evaluation"])
    assert list(steps) == ["environment", "data", "training", "strongest_starting_point", "inference", "evaluation",
                           "two_process_step", "done"]
    assert steps["environment"]["detectron2"].startswith("0.6")

    training = steps["training"]["median_seconds_per_iteration"]
    assert set(training) == {"ours", "ours_frozen", "detectron2"} and min(training.values()) > 0
    assert steps["training"]["amp"] == "skipped: AMP needs CUDA"
    strongest = steps["strongest_starting_point"]
    assert strongest["returncode"] == 0 and strongest["config"] == "configs/cs_ft_R_101_FPN_400ep_LSJ.py"
    assert strongest["iterations_timed"] == 2 and strongest["seconds_per_iteration_median"] > 0
    assert {k for k in steps["inference"] if "x" in k} == {"128x64", "256x128"}
    assert all(steps["inference"][k]["seconds_per_image"] > 0 for k in ("128x64", "256x128"))

    assert steps["two_process_step"]["returncode"] == 0 and steps["two_process_step"]["backend"] == "gloo (CPU)"
    assert os.path.isfile(out / "two_process_step" / "model_final.pth")
    if not reference_works:
        return
    evaluation = steps["evaluation"]["evaluation"]
    assert evaluation["detectron2_s"] > 0 and evaluation["ours_s"] > 0
    assert evaluation["official_same_numbers"] and evaluation["ours_AP"] == evaluation["detectron2_AP"]
