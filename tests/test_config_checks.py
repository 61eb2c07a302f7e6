"""A detectron2 without its compiled extension: configs that need it fail with one clear message."""
import os

import pytest
from conftest import CONFIGS, load_config

from cityscapes_ft.checks import check_config_runnable, detectron2_has_compiled_ops
from cityscapes_ft.errors import ConfigNotRunnable

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


def test_plain_configs_pass_the_check():
    cfg = load_config(os.path.join(CONFIGS, "quick_schedules", "cs_ft_cpu_tiny.yaml"))
    check_config_runnable(cfg)


def test_class_count_must_match_the_datasets():
    cfg = load_config(os.path.join(CONFIGS, "quick_schedules", "cs_ft_cpu_tiny.yaml"),
                      "MODEL.ROI_HEADS.NUM_CLASSES", "80")
    with pytest.raises(ConfigNotRunnable, match="NUM_CLASSES is 80, but dataset 'cityscapes_ft_instance_train' has 8"):
        check_config_runnable(cfg)
