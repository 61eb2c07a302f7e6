"""Fine-tune detectron2's new-baseline Mask R-CNN R101-FPN, 100 COCO epochs with large-scale jitter (COCO 46.4 box / 41.6 mask AP) on Cityscapes (configs/common/cs_ft_lazy.py:
what is kept from the checkpoint's training, input sizes, schedule in epochs, head transfer).

    python tools/lazyconfig_train_net.py --config-file configs/cs_ft_R_101_FPN_100ep_LSJ.py --num-gpus 8
"""
from .common.cs_ft_lazy import new_baseline_fine_tune

model, dataloader, optimizer, train, lr_multiplier, input_sizes, recipe = new_baseline_fine_tune("mask_rcnn_R_101_FPN_100ep_LSJ")
