import os

import torch
from conftest import CONFIGS, load_config
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from cityscapes_ft.data import build_mapper


def test_cs_ft_model_builds_on_cpu_and_runs_train_and_inference(cityscapes_env):
    cfg = load_config(
        os.path.join(CONFIGS, "cs_ft.yaml"),
        "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "256",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256",
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.roi_heads.box_predictor.cls_score.out_features == 9  # 8 classes + background
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 32
    assert model.roi_heads.mask_head.predictor.out_channels == 8
    assert sum(p.numel() for p in model.backbone.bottom_up.parameters()) > 20e6  # R50, not a toy

    dicts = DatasetCatalog.get("cityscapes_ft_instance_train")[:2]
    train_mapper = build_mapper(cfg, is_train=True)
    model.train()
    with EventStorage():
        losses = model([train_mapper(d) for d in dicts])
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.roi_heads.mask_head.predictor.weight.grad.abs().sum() > 0

    model.eval()
    test_mapper = build_mapper(cfg, is_train=False)
    with torch.no_grad():
        out = model([test_mapper(dicts[0])])[0]["instances"]
    assert out.image_size == (128, 256)  # back at the original resolution
    assert out.has("pred_masks") and out.has("scores") and out.has("pred_classes")
    assert out.pred_masks.shape[1:] == (128, 256)
    assert (out.pred_classes < 8).all()
