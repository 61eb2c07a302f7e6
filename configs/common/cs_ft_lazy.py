"""What cityscapes-ft's LazyConfig fine-tunes share (configs/cs_ft_*_LSJ.py, configs/cs_ft_*vitdet_b.py):
detectron2's own COCO LazyConfig, imported, made into a Cityscapes fine-tune.

- Data: Cityscapes gtFine instances (cityscapes_ft_instance_train / _val), the 8 classes.
- Input: the checkpoints were trained with large-scale jitter (LSJ: each image rescaled by 0.1..2.0
  into a 1024x1024 frame, then cropped to 1024x1024) and keep it: Cityscapes frames (2048x1024)
  rescaled by 0.5..2.0 (0.1 would shrink a street scene's pedestrians to a few pixels), then cropped
  to 1024x1024, flipped. Test at the native 1024 short side (long side 2048), as cs_ft.yaml.
  `input_sizes` holds these numbers (override them as input_sizes.crop_size=512 ...).
- Schedule, stated in epochs (passes over the training set, recipe.CITYSCAPES_FT.SCHEDULE): the
  run computes its iterations from the dataset's size and its batch, as cs_ft.yaml does.
  `train.max_iter` and `lr_multiplier` state the same schedule in iterations for the 2975 gtFine
  training images at 8 images per step (for readers and for detectron2's own tools).
- Head transfer: each Cityscapes class's classifier, box and mask rows from its COCO class (rider
  from person), in every cascade stage.
"""
import math

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

CITYSCAPES_TRAIN_IMAGES = 2975  # gtFine train split
BATCH = 8  # global images per step, as cs_ft.yaml (and detectron2's Cityscapes config)
CLASS_MAP = ["person", "person", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def cityscapes_fine_tune(coco, *, init_checkpoint, output_dir, lr, lr_scaling, epochs=64.0, step_epochs=56.0,
                         warmup_iters=500, pad_crop=True):
    """(model, dataloader, optimizer, train, lr_multiplier, input_sizes, recipe) of the fine-tune of
    `coco` (a detectron2 COCO LazyConfig) from `init_checkpoint`; `lr` at BATCH images per step,
    `lr_scaling` for another batch (config.LR_SCALING_RULES)."""
    model = coco.model
    model.roi_heads.num_classes = len(CLASS_MAP)

    input_sizes = dict(crop_size=1024, short_side=1024, max_size=2048, min_scale=0.5, max_scale=2.0)
    dataloader = coco.dataloader
    dataloader.train.dataset.names = "cityscapes_ft_instance_train"
    dataloader.test.dataset.names = "cityscapes_ft_instance_val"
    dataloader.train.total_batch_size = BATCH
    dataloader.train.mapper.augmentations = [
        L(T.RandomFlip)(horizontal=True),
        L(T.ResizeScale)(min_scale="${input_sizes.min_scale}", max_scale="${input_sizes.max_scale}",
                         target_height="${input_sizes.short_side}", target_width="${input_sizes.max_size}"),
        L(T.FixedSizeCrop)(crop_size=("${input_sizes.crop_size}", "${input_sizes.crop_size}"), pad=pad_crop),
    ]
    dataloader.train.mapper.recompute_boxes = True
    dataloader.test.mapper.augmentations = [
        L(T.ResizeShortestEdge)(short_edge_length="${input_sizes.short_side}", max_size="${input_sizes.max_size}"),
    ]

    optimizer = coco.optimizer
    optimizer.lr = lr

    def iterations(passes):
        return int(math.ceil(passes * CITYSCAPES_TRAIN_IMAGES / BATCH))

    train = coco.train
    train.init_checkpoint = init_checkpoint
    train.output_dir = output_dir
    train.max_iter = iterations(epochs)
    train.eval_period = train.checkpointer.period = iterations(8)
    lr_multiplier = L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1], milestones=[iterations(step_epochs)], num_updates=train.max_iter
        ),
        warmup_length=warmup_iters / train.max_iter,
        warmup_factor=0.001,
    )
    recipe = dict(
        MODEL=dict(HEAD_TRANSFER=dict(CLASS_MAP=CLASS_MAP)),
        CITYSCAPES_FT=dict(SCHEDULE=dict(
            UNIT="epochs", MAX_EPOCHS=float(epochs), STEPS_EPOCHS=[float(step_epochs)],
            CHECKPOINT_PERIOD_EPOCHS=8.0, EVAL_PERIOD_EPOCHS=8.0, REFERENCE_IMS_PER_BATCH=BATCH,
            LR_SCALING=lr_scaling,
        )),
    )
    return model, dataloader, optimizer, train, lr_multiplier, input_sizes, recipe


def new_baseline_fine_tune(zoo_config):
    """cityscapes_fine_tune of detectron2's `new_baselines/<zoo_config>.py` from its model-zoo
    checkpoint. Kept from the checkpoint's training (detectron2's config, imported): SyncBN in the
    backbone, FPN and heads (batch statistics over all images of a step, across GPUs), no frozen
    stage, SGD with momentum 0.9 and weight decay 4e-5 (none on norms), mixed precision. LR: the
    checkpoint's 0.1 at 64 images per step, scaled linearly to BATCH (0.0125)."""
    from detectron2 import model_zoo

    name = f"new_baselines/{zoo_config}.py"
    return cityscapes_fine_tune(
        model_zoo.get_config(name), init_checkpoint=model_zoo.get_checkpoint_url(name),
        output_dir=f"./output/cs_ft_{zoo_config.replace('mask_rcnn_', '')}", lr=0.1 * BATCH / 64,
        lr_scaling="linear",
    )


VITDET_NEEDS = ("detectron2's main branch from 2022-06-08 on (commit 1fbb4b3, 'add ViT backbone in ViTDet'); "
                "the v0.6 release (2021-11) predates ViTDet")


def vitdet_fine_tune(model, *, init_checkpoint, output_dir):
    """cityscapes_fine_tune of a ViTDet Mask R-CNN (`model`: detectron2's
    common/models/mask_rcnn_vitdet.py model, or a cascade built on it). Kept from the checkpoint's
    training (detectron2's projects/ViTDet COCO recipe): AdamW (betas 0.9/0.999, weight decay 0.1,
    none on norms and the position embedding) with layer-wise LR decay 0.7 over the 12 ViT-B blocks,
    drop path 0.1, RGB input, mixed precision. LR: the checkpoint's 1e-4 at 64 images per step,
    scaled by the square root to BATCH (3.5e-5): Adam's steps do not grow with the gradient, so the
    linear rule of SGD overshoots (square-root scaling for adaptive optimizers, Malladi et al. 2022).
    Warmup 250 iterations at 64 images (ViTDet's), i.e. 2000 at 8, from 0.001 x LR. Not kept: the
    square padding to 1024x1024 (`square_pad`): a 2048x1024 Cityscapes frame is not square, and the
    ViT's window attention and interpolated position embeddings take any size divisible by 16."""
    from functools import partial
    from types import SimpleNamespace

    from detectron2 import model_zoo
    from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

    model.backbone.square_pad = 0
    dataloader = model_zoo.get_config("common/data/coco.py").dataloader
    dataloader.train.mapper.image_format = "RGB"
    train = model_zoo.get_config("common/train.py").train
    train.amp.enabled = True
    optimizer = model_zoo.get_config("common/optim.py").AdamW
    optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
    optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
    coco = SimpleNamespace(model=model, dataloader=dataloader, optimizer=optimizer, train=train)
    return cityscapes_fine_tune(coco, init_checkpoint=init_checkpoint, output_dir=output_dir,
                                lr=1e-4 * math.sqrt(BATCH / 64), lr_scaling="sqrt", warmup_iters=250 * 64 // BATCH,
                                pad_crop=False)
