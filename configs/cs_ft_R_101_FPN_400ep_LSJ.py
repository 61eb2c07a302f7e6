"""Fine-tune detectron2's new-baseline Mask R-CNN R101-FPN, 400 COCO epochs with large-scale jitter (COCO 48.9 box / 43.7 mask AP) on Cityscapes (configs/common/cs_ft_lazy.py:
what is kept from the checkpoint's training, input sizes, schedule in epochs, head transfer).

    python tools/lazyconfig_train_net.py --config-file configs/cs_ft_R_101_FPN_400ep_LSJ.py --num-gpus 8
"""
from .common.cs_ft_lazy import new_baseline_fine_tune

model, dataloader, optimizer, train, lr_multiplier, input_sizes, recipe = new_baseline_fine_tune("mask_rcnn_R_101_FPN_400ep_LSJ")
