"""tools/make_submission.py writes the benchmark's instance-level format; cityscapesscripts' own
command-line evaluation, reading those files back from disk, gives exactly our official AP."""
import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import FIXTURE, FIXTURE_MAX_ITER, REPO, TINY, assert_far_from_0_and_100, evaluation_of, run

SAME_AS_TRAINED_EVAL = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")


def make_submission(out_dir, split, weights, datasets):
    return run(["tools/make_submission.py", "--config-file", FIXTURE, "--split", split, "--output", str(out_dir),
                "MODEL.WEIGHTS", weights, *SAME_AS_TRAINED_EVAL], datasets)


@pytest.mark.slow
def test_val_submission_scored_by_cityscapesscripts_command_line_equals_our_official_ap(trained, synthetic_root,
                                                                                      tmp_path):
    out, _ = trained
    make_submission(tmp_path / "sub", "val", os.path.join(out, "model_final.pth"), synthetic_root)
    ours = evaluation_of(out, FIXTURE_MAX_ITER)["results"]["cityscapes"]  # same weights, same threshold
    assert_far_from_0_and_100(ours["AP"], ours["AP50"])
    # cityscapesscripts' main(): it finds each ground-truth image's prediction file under
    # CITYSCAPES_RESULTS itself; only its ground-truth cache and results file are put in tmp_path
    # (by default they go into the installed package and the dataset).
    script = (f"import sys; sys.path.insert(0, {os.path.join(REPO, 'tools')!r}); "
              "from cityscapesscripts_on_numpy2 import mend_cityscapesscripts_for_numpy2 as mend; mend(); "
              "from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as m; "
              "m.args.gtInstancesFile, m.args.exportFile = sys.argv[1], sys.argv[2]; sys.argv = sys.argv[:1]; m.main()")
    env = dict(os.environ, CITYSCAPES_DATASET=os.path.join(synthetic_root, "cityscapes"),
               CITYSCAPES_RESULTS=str(tmp_path / "sub" / "results"))
    export = tmp_path / "official.json"
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "gtInstances.json"), str(export)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    official = json.load(open(export))
    assert 100 * official["averages"]["allAp"] == ours["AP"]
    assert 100 * official["averages"]["allAp50%"] == ours["AP50"]
    # every val image has its prediction file, none of them empty
    texts = glob.glob(str(tmp_path / "sub" / "results" / "*_pred.txt"))
    assert len(texts) == 6 and all(open(t).read().strip() for t in texts)


@pytest.mark.slow
def test_test_split_needs_only_images_and_is_packed_for_upload(trained, synthetic_root, tmp_path):
    out, _ = trained
    root = tmp_path / "data"
    images = os.path.join(synthetic_root, "cityscapes", "leftImg8bit", "val")
    shutil.copytree(images, root / "cityscapes" / "leftImg8bit" / "test")  # no gtFine/test at all
    proc = make_submission(tmp_path / "sub", "test", os.path.join(out, "model_final.pth"), str(root))
    summary = json.load(open(tmp_path / "sub" / "submission.json"))
    stems = sorted(os.path.basename(p)[: -len("_leftImg8bit.png")]
                   for p in glob.glob(os.path.join(images, "*", "*.png")))
    texts = sorted(glob.glob(str(tmp_path / "sub" / "results" / "*_pred.txt")))
    assert [os.path.basename(t)[: -len("_pred.txt")] for t in texts] == stems
    lines = [line.split() for t in texts for line in open(t).read().splitlines()]
    assert summary["images"] == len(stems) and summary["instances"] == len(lines) > 0
    for png, label_id, score in lines:  # relative mask path, Cityscapes label id, confidence
        assert os.path.isfile(tmp_path / "sub" / "results" / png)
        assert int(label_id) in (24, 25, 26, 27, 28, 31, 32, 33) and 0.0 <= float(score) <= 1.0
    with zipfile.ZipFile(tmp_path / "sub" / "submission.zip") as z:
        names = set(z.namelist())
    assert {f"results/{os.path.basename(t)}" for t in texts} <= names
    assert sum(n.endswith(".png") for n in names) == summary["mask_files"] == len(lines)
    assert '"archive_mb"' in proc.stdout


def test_submission_without_weights_is_refused_before_any_work(tmp_path):
    """An empty MODEL.WEIGHTS would submit an untrained model: one named error, nothing written."""
    from conftest import load_config

    from cityscapes_ft.engine.submission import make_submission as make
    from cityscapes_ft.errors import WeightsNotAvailable

    with pytest.raises(WeightsNotAvailable, match="MODEL.WEIGHTS is empty"):
        make(load_config(TINY), "val", str(tmp_path / "sub"))
    assert not os.path.exists(tmp_path / "sub")
