import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


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
    from test_train_net_cli import train_net

    out = str(tmp_path_factory.mktemp("train"))
    proc = train_net("OUTPUT_DIR", out, "SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "4",
                     "CITYSCAPES_FT.VIS_NUM_IMAGES", "2", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                     "CITYSCAPES_FT.VIS_SCORE_THRESH", "0.0", datasets=synthetic_root)
    return out, proc
