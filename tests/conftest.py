import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
TINY = os.path.join(CONFIGS, "quick_schedules", "cs_ft_cpu_tiny.yaml")
# cs_ft.yaml's R50-FPN at CPU test size: tiny images, no COCO download, no loader workers.
CS_FT_ON_CPU = ("MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TRAIN", "(96,)",
                "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "192",
                "DATALOADER.NUM_WORKERS", "0", "SOLVER.CLIP_GRADIENTS.ENABLED", "True")


sys.path.insert(0, os.path.join(REPO, "tools"))
from cityscapesscripts_on_numpy2 import mend_cityscapesscripts_for_numpy2  # noqa: E402

# The official-metric tests use cityscapesscripts itself as the arbiter, on any numpy.
mend_cityscapesscripts_for_numpy2()


def detectron2_cityscapes_evaluator_works():
    """Upstream main's Cityscapes loader and evaluator import a Meta-internal module inside their
    functions since 4823082a (detectron2 #5436); v0.6's import cityscapesscripts."""
    import inspect

    import detectron2.data.datasets.cityscapes as loader
    from detectron2.evaluation import cityscapes_evaluation as evaluator

    return not any("deeplearning.projects" in inspect.getsource(m) for m in (loader, evaluator))


def run(args, datasets, timeout=600, expect_ok=True, env=None):
    """Run `python args...` in the repository with DETECTRON2_DATASETS=datasets."""
    env = dict(os.environ, DETECTRON2_DATASETS=datasets, OMP_NUM_THREADS="2", **(env or {}))
    proc = subprocess.run(
        [sys.executable] + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def train_net(*args, config=TINY, **kw):
    """tools/train_net.py --config-file config args..."""
    return run([os.path.join("tools", "train_net.py"), "--config-file", config] + list(args), **kw)


@pytest.fixture(scope="session", autouse=True)
def private_dataset_cache(tmp_path_factory):
    """The parsed-dataset cache of this test session (and its subprocesses) lives in a temp dir."""
    os.environ["CITYSCAPES_FT_CACHE_DIR"] = str(tmp_path_factory.mktemp("dataset_cache"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic Cityscapes tree; returns the folder to use as DETECTRON2_DATASETS."""
    from cityscapes_ft.data.synthetic import make_synthetic_cityscapes

    base = tmp_path_factory.mktemp("d2datasets")
    make_synthetic_cityscapes(str(base / "cityscapes"), num_train=8, num_val=6, width=256,
                              height=128, seed=3, log=lambda *_: None)
    return str(base)


@pytest.fixture
def cityscapes_env(synthetic_root, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", synthetic_root)
    return synthetic_root


def load_config(path, *opts):
    from cityscapes_ft.config import load_cityscapes_ft_cfg

    return load_cityscapes_ft_cfg(path, opts)


@pytest.fixture(scope="session")
def trained(synthetic_root, tmp_path_factory):
    """A 4-iteration CPU training run through tools/train_net.py (evaluated at its end, with 2
    prediction pictures and the run report): (output dir, finished process)."""
    out = str(tmp_path_factory.mktemp("train"))
    proc = train_net("OUTPUT_DIR", out, "SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "4",
                     "CITYSCAPES_FT.VIS_NUM_IMAGES", "2", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                     "CITYSCAPES_FT.VIS_SCORE_THRESH", "0.0", datasets=synthetic_root)
    return out, proc
