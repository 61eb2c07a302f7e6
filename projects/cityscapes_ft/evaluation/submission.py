"""Predictions in the Cityscapes benchmark's instance-level results format, packed for upload."""
import itertools
import logging
import os
import shutil

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..data.cityscapes import thing_label_ids
from ..utils import atomic_write_json
from .official_parallel import write_prediction_masks

logger = logging.getLogger(__name__)
RESULTS_FOLDER = "results"
ARCHIVE_NAME = "submission.zip"


class CityscapesSubmissionWriter(DatasetEvaluator):
    """Writes each image's predictions as the benchmark server (and cityscapesscripts'
    evalInstanceLevelSemanticLabeling) reads them: `<output_dir>/results/<city>_<seq>_<frame>_pred.txt`
    listing, one instance per line, its mask PNG (beside it, relative path), its Cityscapes label id
    and its confidence. evaluate() packs results/ into `<output_dir>/submission.zip` and returns
    a summary (images, instances, files, size). Every process writes its own images."""

    def __init__(self, dataset_name, output_dir):
        self._label_ids = thing_label_ids(MetadataCatalog.get(dataset_name))
        self._output_dir = output_dir
        self._results_dir = os.path.join(output_dir, RESULTS_FOLDER)

    def reset(self):
        """An empty results folder (made by the main process before any process writes)."""
        if comm.is_main_process():
            shutil.rmtree(self._results_dir, ignore_errors=True)
            os.makedirs(self._results_dir)
        comm.synchronize()
        self._images = self._instances = 0

    def process(self, inputs, outputs):
        """Writes each image's text file and mask PNGs."""
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to("cpu")
            stem = os.path.basename(inp["file_name"])[: -len("_leftImg8bit.png")]
            masks = instances.pred_masks.numpy().astype(bool)
            keep = [k for k in range(len(masks)) if masks[k].any()]  # an empty mask is no instance
            write_prediction_masks(self._results_dir, stem, [int(instances.pred_classes[k]) for k in keep],
                                   [float(instances.scores[k]) for k in keep], [masks[k] for k in keep],
                                   self._label_ids, compress_level=6)
            self._images += 1
            self._instances += len(keep)

    def evaluate(self):
        """Packs the results on the main process; returns {"submission": summary} there."""
        comm.synchronize()
        counts = comm.gather((self._images, self._instances), dst=0)
        if not comm.is_main_process():
            return {}
        images, instances = (sum(c) for c in zip(*counts))
        archive = os.path.join(self._output_dir, ARCHIVE_NAME)
        partial = shutil.make_archive(archive + ".partial", "zip", root_dir=self._output_dir, base_dir=RESULTS_FOLDER)
        os.replace(partial, archive)
        files = list(itertools.chain.from_iterable(names for _, _, names in os.walk(self._results_dir)))
        summary = {
            "images": images, "instances": instances, "text_files": sum(f.endswith("_pred.txt") for f in files),
            "mask_files": sum(f.endswith(".png") for f in files), "results": os.path.abspath(self._results_dir),
            "archive": os.path.abspath(archive), "archive_mb": round(os.path.getsize(archive) / 2**20, 2),
        }
        atomic_write_json(os.path.join(self._output_dir, "submission.json"), summary)
        logger.info(f"Submission: {images} images, {instances} instances, {summary['mask_files']} masks in "
                    f"{self._results_dir}; packed as {archive} ({summary['archive_mb']} MB)")
        return {"submission": summary}
