"""Fine-tune ViTDet's Mask R-CNN ViT-B (COCO 51.6 box / 45.9 mask AP, MAE-pretrained ViT-B) on Cityscapes
(configs/common/cs_ft_lazy.py: what is kept from the checkpoint's training, input sizes, schedule in
epochs, head transfer). The model is detectron2's common/models/mask_rcnn_vitdet.py, imported; it
needs a detectron2 with ViTDet (its main branch; not the v0.6 release) and timm, both checked first.

    python tools/lazyconfig_train_net.py --config-file configs/cs_ft_mask_rcnn_vitdet_b.py --num-gpus 8
"""
from cityscapes_ft.lazy import require_detectron2_with

from .common.cs_ft_lazy import VITDET_NEEDS, vitdet_fine_tune

require_detectron2_with("detectron2.modeling.ViT", VITDET_NEEDS, __file__, packages=["timm"])

from detectron2 import model_zoo  # noqa: E402

model, dataloader, optimizer, train, lr_multiplier, input_sizes, recipe = vitdet_fine_tune(
    model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model,
    init_checkpoint="detectron2://ViTDet/COCO/mask_rcnn_vitdet_b/f325346929/model_final_61ccd1.pkl",
    output_dir="./output/cs_ft_mask_rcnn_vitdet_b",
)
