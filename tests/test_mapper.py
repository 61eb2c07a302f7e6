import os

import numpy as np
import pytest
import torch
from conftest import CONFIGS, load_config
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from PIL import Image

from cityscapes_ft.data import MAPPER_REGISTRY, CityscapesInstanceMapper, build_mapper

LABEL_IDS = [24, 25, 26, 27, 28, 31, 32, 33]


def demo_cfg(*opts):
    return load_config(os.path.join(CONFIGS, "quick_schedules", "cs_ft_cpu_demo.yaml"), *opts)


def test_mapper_is_chosen_by_config_key():
    cfg = demo_cfg()
    assert isinstance(build_mapper(cfg, is_train=True), CityscapesInstanceMapper)

    @MAPPER_REGISTRY.register()
    class RecordingMapper:
        def __init__(self, cfg, is_train):
            self.is_train = is_train

    cfg.INPUT.DATASET_MAPPER_NAME = "RecordingMapper"
    mapper = build_mapper(cfg, is_train=False)
    assert isinstance(mapper, RecordingMapper) and mapper.is_train is False


@pytest.mark.parametrize("flip", [False, True])
def test_masks_and_boxes_follow_the_image_through_resize_and_flip(cityscapes_env, flip):
    d = max(DatasetCatalog.get("cityscapes_ft_instance_train"), key=lambda d: len(d["annotations"]))
    mapper = CityscapesInstanceMapper(
        is_train=True,
        augmentations=[T.ResizeShortestEdge(192, 1000), T.RandomFlip(prob=1.0 if flip else 0.0)],
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format="bitmask",
        recompute_boxes=True,
    )
    out = mapper(d)
    assert "annotations" not in out
    image = out["image"]
    assert image.shape == (3, 192, 384) and image.dtype == torch.uint8
    inst = out["instances"]
    n_crowd = sum(a["iscrowd"] for a in d["annotations"])
    assert len(inst) == len(d["annotations"]) - n_crowd  # crowd regions are not targets
    masks = inst.gt_masks.tensor.numpy()
    # boxes are the masks' extents
    for box, mask in zip(inst.gt_boxes.tensor.numpy(), masks):
        ys, xs = np.nonzero(mask)
        np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.01)
    # masks agree with the official instanceIds.png resized and flipped the same way
    ids = np.asarray(Image.open(d["instance_ids_file"]).resize((384, 192), Image.NEAREST))
    if flip:
        ids = ids[:, ::-1]
    compared = 0
    for cls, mask in zip(inst.gt_classes.tolist(), masks):
        if mask.sum() < 300:
            continue  # slivers: nearest-neighbour resizing of the id image dominates their IoU
        compared += 1
        candidates = [ids == i for i in np.unique(ids) if i // 1000 == LABEL_IDS[cls] and i >= 1000]
        best = max((m & mask).sum() / (m | mask).sum() for m in candidates)
        assert best > 0.7
    assert compared >= 3
    # and the image pixels were flipped with them
    raw = np.asarray(Image.open(d["file_name"]).resize((384, 192), Image.BILINEAR))[:, :, ::-1]
    if flip:
        raw = raw[:, ::-1]
    assert np.abs(image.permute(1, 2, 0).numpy().astype(int) - raw.astype(int)).mean() < 12


def test_multi_scale_training_sizes_come_from_config(cityscapes_env):
    cfg = demo_cfg()
    mapper = build_mapper(cfg, is_train=True)
    d = DatasetCatalog.get("cityscapes_ft_instance_train")[0]
    shorts = {min(mapper(d)["image"].shape[1:]) for _ in range(30)}
    assert shorts == set(cfg.INPUT.MIN_SIZE_TRAIN)
    test_mapper = build_mapper(cfg, is_train=False)
    out = test_mapper(d)
    assert min(out["image"].shape[1:]) == cfg.INPUT.MIN_SIZE_TEST and "instances" not in out


def test_vertical_flip_is_refused():
    with pytest.raises(ValueError, match="INPUT.RANDOM_FLIP"):
        build_mapper(demo_cfg("INPUT.RANDOM_FLIP", "vertical"), is_train=True)


def test_crop_is_detectron2s_dataset_mapper_and_boxes_are_the_cropped_masks(cityscapes_env):
    """With INPUT.CROP, our mapper gives what detectron2's own DatasetMapper gives from the same
    config and the same random state (its crop of the original image, then the resize and flip):
    the same image tensor, classes, bitmasks and boxes, for 10 draws. Every box is the extent of
    what is left of its mask, and some crops leave objects out."""
    from detectron2.data import DatasetMapper

    cfg = demo_cfg("INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", "(64, 96)",
                   "INPUT.MASK_FORMAT", "bitmask", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "1000")
    ours, reference = build_mapper(cfg, is_train=True), DatasetMapper(cfg, is_train=True)
    d = max(DatasetCatalog.get("cityscapes_ft_instance_train"), key=lambda d: len(d["annotations"]))
    kept = []
    for seed in range(10):
        np.random.seed(seed)
        out = ours(d)
        np.random.seed(seed)
        expected = reference(d)
        assert torch.equal(out["image"], expected["image"])
        assert tuple(out["image"].shape[1:]) == (128, 192)  # 64x96 crop, short side resized to 128
        inst, ref = out["instances"], expected["instances"]
        assert torch.equal(inst.gt_classes, ref.gt_classes)
        assert torch.equal(inst.gt_masks.tensor, ref.gt_masks.tensor)
        assert torch.equal(inst.gt_boxes.tensor, ref.gt_boxes.tensor)
        kept.append(len(inst))
        for box, mask in zip(inst.gt_boxes.tensor.numpy(), inst.gt_masks.tensor.numpy()):
            ys, xs = np.nonzero(mask)
            assert len(ys) > 0
            np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.01)
    uncropped = sum(not a["iscrowd"] for a in d["annotations"])
    assert min(kept) < uncropped  # crops leave objects out
