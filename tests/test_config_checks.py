"""A detectron2 without its compiled extension: configs that need it fail with one clear message."""
import glob
import os

import pytest
import torch
from conftest import CONFIGS, load_config

from cityscapes_ft.checks import check_config_runnable, detectron2_has_compiled_ops, ops_needing_extension
from cityscapes_ft.errors import ConfigNotRunnable

CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True)
                      if not os.path.basename(p).startswith("Base-")
                      and os.path.dirname(p) != os.path.join(CONFIGS, "sweeps"))  # search spaces, not configs


def _stand_in_installed():
    try:
        from detectron2 import _C
    except ImportError:  # upstream detectron2 built without the extension: nothing answers
        return False
    return getattr(_C, "BUILT_WITHOUT_EXTENSION", False)


needs_stub = pytest.mark.skipif(
    not _stand_in_installed(),
    reason="about install/detectron2_C_stub.py, which this detectron2 does not use",
)
without_extension = pytest.mark.skipif(
    detectron2_has_compiled_ops(), reason="this detectron2 has its compiled extension"
)


@without_extension
@pytest.mark.parametrize(
    "opts, what",
    [
        (("MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, True, True, True]"), "deformable"),
        (("MODEL.PROPOSAL_GENERATOR.NAME", "RRPN"), "rotated"),
        (("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlignRotated"), "rotated"),
    ],
)
def test_config_needing_compiled_ops_is_refused_up_front(opts, what):
    cfg = load_config(os.path.join(CONFIGS, "quick_schedules", "cs_ft_cpu_tiny.yaml"), *opts)
    with pytest.raises(ConfigNotRunnable) as e:
        check_config_runnable(cfg)
    assert "detectron2._C" in str(e.value) and what in str(e.value) and opts[0] in str(e.value)


@needs_stub
def test_compiled_op_call_names_the_missing_extension():
    from detectron2 import _C

    with pytest.raises(RuntimeError, match="built without its C\\+\\+ extension"):
        _C.deform_conv_forward
    assert not hasattr(_C, "__wrapped__")  # introspection still sees a plain module
    assert isinstance(_C.get_compiler_version(), str) and _C.has_cuda() is False


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, CONFIGS))
def test_every_config_asks_for_no_compiled_op_and_passes_the_check(path):
    """None of configs/ needs detectron2's compiled extension, so each runs on this install."""
    cfg = load_config(path, "MODEL.DEVICE", "cpu")
    assert ops_needing_extension(cfg) == []
    assert check_config_runnable(cfg) is None


def test_a_config_that_passes_the_check_builds_and_predicts_here():
    """The check's verdict, checked: the tiny config's model builds and predicts on this detectron2
    (with or without its compiled extension), on an image at the test size."""
    from detectron2.modeling import build_model

    cfg = load_config(os.path.join(CONFIGS, "quick_schedules", "cs_ft_cpu_tiny.yaml"),
                      "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    check_config_runnable(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 256, (3, 128, 256), dtype=torch.uint8).float(),
                      "height": 128, "width": 256}])[0]["instances"]
    assert out.image_size == (128, 256) and len(out) > 0
    assert out.pred_masks.shape[1:] == (128, 256) and bool((out.pred_classes < 8).all())


def test_class_count_must_match_the_datasets():
    cfg = load_config(os.path.join(CONFIGS, "quick_schedules", "cs_ft_cpu_tiny.yaml"),
                      "MODEL.ROI_HEADS.NUM_CLASSES", "80")
    with pytest.raises(ConfigNotRunnable, match="NUM_CLASSES is 80, but dataset 'cityscapes_ft_instance_train' has 8"):
        check_config_runnable(cfg)
