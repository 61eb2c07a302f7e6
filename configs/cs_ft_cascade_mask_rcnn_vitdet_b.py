"""Fine-tune ViTDet's Cascade Mask R-CNN ViT-B (COCO 54.0 box / 46.7 mask AP) on Cityscapes
(configs/common/cs_ft_lazy.py). The model is detectron2's common/models/mask_rcnn_vitdet.py with the
ROI heads of its common/models/cascade_rcnn.py (three stages, class-agnostic boxes), each stage's box
head made ViTDet's (4 convolutions with LayerNorm, 1 fully connected layer), as the checkpoint was
trained; head transfer maps the classifier of every stage. Needs a detectron2 with ViTDet.

    python tools/lazyconfig_train_net.py --config-file configs/cs_ft_cascade_mask_rcnn_vitdet_b.py --num-gpus 8
"""
from cityscapes_ft.lazy import require_detectron2_with

from .common.cs_ft_lazy import VITDET_NEEDS, vitdet_fine_tune

require_detectron2_with("detectron2.modeling.ViT", VITDET_NEEDS, __file__, packages=["timm"])

from detectron2 import model_zoo  # noqa: E402

_model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
_cascade_heads = model_zoo.get_config("common/models/cascade_rcnn.py").model.roi_heads
for _box_head in _cascade_heads.box_heads:
    _box_head.update(conv_dims=[256, 256, 256, 256], fc_dims=[1024], conv_norm="LN")
_cascade_heads.mask_head = _model.roi_heads.mask_head  # ViTDet's, with LayerNorm
_model.roi_heads = _cascade_heads

model, dataloader, optimizer, train, lr_multiplier, input_sizes, recipe = vitdet_fine_tune(
    _model,
    init_checkpoint="detectron2://ViTDet/COCO/cascade_mask_rcnn_vitdet_b/f325358525/model_final_435fa9.pkl",
    output_dir="./output/cs_ft_cascade_mask_rcnn_vitdet_b",
)
