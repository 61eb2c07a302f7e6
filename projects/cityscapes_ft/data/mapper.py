"""The Cityscapes instance mapper: dataset dict -> model input, in detectron2's mapper idiom."""
from detectron2.data import DatasetMapper
from detectron2.utils.registry import Registry

from ..errors import CityscapesDataError

MAPPER_REGISTRY = Registry("CITYSCAPES_FT_MAPPER")
MAPPER_REGISTRY.__doc__ = "Dataset mappers, chosen by cfg.INPUT.DATASET_MAPPER_NAME."


def build_mapper(cfg, is_train: bool):
    """The mapper that INPUT.DATASET_MAPPER_NAME names in MAPPER_REGISTRY."""
    return MAPPER_REGISTRY.get(cfg.INPUT.DATASET_MAPPER_NAME)(cfg, is_train)


@MAPPER_REGISTRY.register()
class CityscapesInstanceMapper(DatasetMapper):
    """detectron2's `DatasetMapper` (reads the image; resizes its short side, multi-scale when
    training; flips; `INPUT.CROP.*`; polygon or bitmask masks per `INPUT.MASK_FORMAT`; leaves crowd
    regions out of the targets), with what Cityscapes adds:

    - the boxes are always those of the masks after the transforms (detectron2 recomputes them only
      when cropping): a Cityscapes box is the extent of the visible polygon;
    - vertical flips are refused (`INPUT.RANDOM_FLIP` is horizontal or none);
    - an image that cannot be read is named in a `CityscapesDataError`, which the training stream
      skips or stops on (`CITYSCAPES_FT.ON_BAD_SAMPLE`).

    Crowd regions (Cityscapes "*group" labels) are not targets: detectron2's RPN and ROI heads
    cannot ignore a region, so they are left out of training, and the evaluators score them as
    ignore regions. Images left without instances are dropped by the loader
    (DATALOADER.FILTER_EMPTY_ANNOTATIONS).
    """

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        """DatasetMapper's arguments from cfg, with vertical flips refused and the boxes always
        recomputed from the masks."""
        if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "none"):
            raise ValueError(
                f"INPUT.RANDOM_FLIP: Cityscapes scenes can only be flipped horizontally; got "
                f"'{cfg.INPUT.RANDOM_FLIP}', expected 'horizontal' or 'none'"
            )
        ret = super().from_config(cfg, is_train)
        ret["recompute_boxes"] = bool(cfg.MODEL.MASK_ON)
        return ret

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError) as e:  # what PIL raises for a missing, truncated or non-image file
            raise CityscapesDataError(f"Unreadable image {dataset_dict['file_name']}: {e}") from e
