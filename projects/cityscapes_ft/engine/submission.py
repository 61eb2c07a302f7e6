"""tools/make_submission.py: a trained model's predictions on a split, in the benchmark's format."""
import logging

from detectron2.evaluation import inference_on_dataset

from ..checkpoint import load_model
from ..checks import check_config_runnable
from ..evaluation.submission import CityscapesSubmissionWriter
from .trainer import CityscapesFTTrainer

logger = logging.getLogger(__name__)


def make_submission(cfg, split: str, output_dir: str):
    """Loads cfg.MODEL.WEIGHTS exactly (any tensor that does not fit is refused), predicts on
    cityscapes_ft_instance_<split> (the test split needs only its images) and writes the results
    folder and zip under output_dir. Returns the summary on the main process."""
    check_config_runnable(cfg)
    dataset = f"cityscapes_ft_instance_{split}"
    model = load_model(cfg, strict=True)
    writer = CityscapesSubmissionWriter(dataset, output_dir)
    results = inference_on_dataset(model, CityscapesFTTrainer.build_test_loader(cfg, dataset), writer)
    return results.get("submission") if results else None
