"""tools/export_model.py: a fine-tuned Mask R-CNN exported for deployment, checked against itself.

The exported graph is the network from the resized image to per-detection boxes, scores, classes
and 28x28 mask probabilities, traced through detectron2's TracingAdapter. Formats:
- onnx: torch.onnx's TorchScript-based exporter (opset 17), run by onnxruntime; the image's
  height and width are dynamic.
- torchscript: torch.jit.trace; runs with torch and torchvision alone, any image size.
- torch_export: torch.export cannot carry detectron2's Mask R-CNN: its padding to the size
  divisibility, proposal top-k and NMS have data-dependent shapes that torch.export refuses to
  guard on; asked for, it fails with that reason in one line.
No format carries the test-time resize, the mask pasting or TTA: export/runtime.py does the first
two around the graph, with torch only.
"""
import contextlib
import io
import logging
import os
import shutil
import time
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from ..checkpoint import load_model
from ..checks import check_config_runnable
from ..data import CITYSCAPES_FRAME, CITYSCAPES_THING_CLASSES
from ..compat import import_detectron2_export
from ..engine.trainer import CityscapesFTTrainer
from ..errors import CheckpointUnreadable, ExportNotSupported
from ..utils import atomic_write_json
from . import runtime

logger = logging.getLogger(__name__)
FORMATS = ("onnx", "torchscript", "torch_export")
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.ts", "torch_export": "model.pt2"}
ONNX_OPSET = 17
RUNTIME_FILE = "cityscapes_ft_runtime.py"


def check_config_exportable(cfg):
    """The exporter handles detectron2's GeneralizedRCNN with a mask head (every Mask R-CNN of the
    model zoo, Cascade included); anything else is refused naming the key."""
    check_config_runnable(cfg)
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        raise ExportNotSupported(f"MODEL.META_ARCHITECTURE is '{cfg.MODEL.META_ARCHITECTURE}': the exporter "
                                 "handles detectron2's GeneralizedRCNN (Mask R-CNN) only")
    if not cfg.MODEL.MASK_ON or cfg.MODEL.KEYPOINT_ON:
        raise ExportNotSupported("the exporter handles Mask R-CNN: it needs MODEL.MASK_ON True and "
                                 "MODEL.KEYPOINT_ON False")


def _network_outputs(model, image):
    """What the exported graph returns: the detections before postprocessing, as plain tensors."""
    instances = model.inference([{"image": image}], do_postprocess=False)[0]
    return instances.pred_boxes.tensor, instances.scores, instances.pred_classes, instances.pred_masks


def sample_image(cfg, seed: int = 0) -> torch.Tensor:
    """A float (3, H, W) image at the size a Cityscapes frame has after the config's test resize."""
    size = runtime.resized_shape(*CITYSCAPES_FRAME, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, *size), generator=generator).float()


def _write_graph(adapter, image, fmt: str, path: str):
    if fmt == "onnx":
        dynamic = {"image": {1: "height", 2: "width"}}
        dynamic.update({name: {0: "detections"} for name in runtime.OUTPUT_NAMES})
        torch.onnx.export(adapter, (image,), path, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["image"], output_names=list(runtime.OUTPUT_NAMES), dynamic_axes=dynamic)
    elif fmt == "torchscript":
        torch.jit.trace(adapter, (image,), check_trace=False).save(path)
    else:
        # Where it fails, torch.export prints the whole traced graph before it raises.
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            program = torch.export.export(adapter, (image,), strict=False)
        torch.export.save(program, path)


def export_model(cfg, output_dir: str, fmt: str = "onnx") -> Dict:
    """Exports cfg's model (cfg.MODEL.WEIGHTS) into output_dir: the model file, export_meta.json
    and the torch-only runner; checks the exported graph against the PyTorch model on a sample
    image. Returns the metadata written."""
    if fmt not in FORMATS:
        raise ExportNotSupported(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    check_config_exportable(cfg)
    model = load_model(cfg, strict=True)
    image = sample_image(cfg)
    adapter = import_detectron2_export().TracingAdapter(model, (image,), _network_outputs).eval()
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, MODEL_FILES[fmt])
    partial = path + ".partial"
    started = time.perf_counter()
    try:
        with torch.no_grad():
            _write_graph(adapter, image, fmt, partial)
    except Exception as e:
        if os.path.exists(partial):
            os.remove(partial)
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = (" (detectron2's Mask R-CNN has data-dependent shapes: padding, top-k, NMS)"
                if fmt == "torch_export" else "")
        raise ExportNotSupported(
            f"--format {fmt} cannot export this config's model ({cfg.MODEL.META_ARCHITECTURE}, "
            f"{cfg.MODEL.ROI_HEADS.NAME}){hint}: {type(e).__name__}: {first_line[:300]} -- "
            f"try --format {'onnx' if fmt != 'onnx' else 'torchscript'}") from e
    os.replace(partial, path)
    meta = {
        "format": fmt, "file": MODEL_FILES[fmt], "input_format": cfg.INPUT.FORMAT,
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST, "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
        "class_names": list(CITYSCAPES_THING_CLASSES), "mask_threshold": 0.5,
        "score_threshold": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        "detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE, "weights": cfg.MODEL.WEIGHTS,
        "torch": torch.__version__, "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
        "export_seconds": round(time.perf_counter() - started, 2),
        "not_carried": "the test-time resize and mask pasting (cityscapes_ft_runtime.py does them), TTA",
    }
    atomic_write_json(os.path.join(output_dir, runtime.META_FILE), meta)  # the runner reads it for the check
    shutil.copyfile(runtime.__file__, os.path.join(output_dir, RUNTIME_FILE))
    meta["check"] = compare_on_image(model, runtime.ExportedMaskRCNN(output_dir), image)
    atomic_write_json(os.path.join(output_dir, runtime.META_FILE), meta)
    logger.info(f"Exported {fmt} to {path}; on a {tuple(image.shape[1:])} sample image: {meta['check']}")
    return meta


def compare_on_image(model, exported: runtime.ExportedMaskRCNN, image: torch.Tensor) -> Dict:
    """The exported graph's raw outputs against the PyTorch model's on one image: detection counts
    and the largest differences of boxes (pixels), scores and mask probabilities."""
    with torch.no_grad():
        expected = _network_outputs(model, image)
    got = exported.run_network(image)
    check = {"detections": len(expected[0]), "detections_exported": len(got[0])}
    if len(expected[0]) == len(got[0]):
        for name, a, b in zip(runtime.OUTPUT_NAMES, expected, got):
            if name != "classes":
                check[f"max_abs_difference_{name}"] = float((a.float() - b.float()).abs().max()) if len(a) else 0.0
    return check


class TimedDetector(torch.nn.Module):
    """A detector whose forward time (the network and its postprocessing) is summed, per image."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector
        self.seconds, self.images = 0.0, 0

    def forward(self, batched_inputs):
        started = time.perf_counter()
        outputs = self.detector(batched_inputs)
        self.seconds += time.perf_counter() - started
        self.images += len(batched_inputs)
        return outputs

    @property
    def seconds_per_image(self) -> Optional[float]:
        """Mean forward seconds per image so far (None before the first)."""
        return round(self.seconds / self.images, 4) if self.images else None


class ExportedDetector(torch.nn.Module):
    """An exported graph behind detectron2's model interface (the test loader's dicts in,
    [{"instances"}] out), postprocessed exactly as GeneralizedRCNN postprocesses: so an evaluation
    of it differs from the original's only by the graph."""

    def __init__(self, exported: runtime.ExportedMaskRCNN):
        super().__init__()
        self.exported = exported

    def forward(self, batched_inputs):
        results = []
        for inputs in batched_inputs:
            image = inputs["image"]
            height, width = image.shape[-2:]
            boxes, scores, classes, mask_probs = self.exported.run_network(image.float())
            instances = Instances((height, width))
            instances.pred_boxes = Boxes(boxes)
            instances.scores = scores
            instances.pred_classes = classes.long()
            instances.pred_masks = mask_probs
            results.append({"instances": detector_postprocess(
                instances, inputs.get("height", height), inputs.get("width", width))})
        return results


def evaluate_export(cfg, output_dir: str, dataset: str) -> Dict:
    """Official and COCO AP and CPU latency of the original model and of the export in output_dir
    on `dataset`, one after the other in this process; written to output_dir/export_eval.json."""
    exported = runtime.ExportedMaskRCNN(output_dir, num_threads=torch.get_num_threads())
    detectors = {"original": TimedDetector(load_model(cfg, strict=True)),
                 "exported": TimedDetector(ExportedDetector(exported))}
    report = {"dataset": dataset, "format": exported.format, "weights": cfg.MODEL.WEIGHTS}
    for name, detector in detectors.items():
        logger.info(f"Evaluating the {name} model on {dataset}")
        evaluator = CityscapesFTTrainer.build_evaluator(cfg, dataset, os.path.join(output_dir, f"eval_{name}"))
        results = inference_on_dataset(detector, CityscapesFTTrainer.build_test_loader(cfg, dataset), evaluator)
        report[name] = dict(results, seconds_per_image=detector.seconds_per_image, images=detector.images)
    report["largest_ap_difference"] = largest_ap_difference(report["original"], report["exported"])
    atomic_write_json(os.path.join(output_dir, "export_eval.json"), report)
    return report


def largest_ap_difference(original: Dict, exported: Dict) -> float:
    """The largest |exported - original| over every AP number both hold (NaN where both are NaN)."""
    differences = [0.0]
    for task, metrics in original.items():
        if not isinstance(metrics, dict) or not isinstance(exported.get(task), dict):
            continue
        for key, value in metrics.items():
            other = exported[task].get(key)
            if isinstance(value, float) and isinstance(other, float) and not (np.isnan(value) and np.isnan(other)):
                differences.append(abs(value - other))
    return round(max(differences), 4)


class ExportedInstancePredictor:
    """An exported model as detectron2's DefaultPredictor is called (a BGR (H, W, 3) uint8 image in,
    {"instances": Instances} at the image's size out): tools/demo.py --exported draws its
    predictions exactly as it draws the PyTorch model's."""

    def __init__(self, export_dir: str):
        if not os.path.isfile(os.path.join(export_dir, runtime.META_FILE)):
            raise CheckpointUnreadable(f"--exported {export_dir}: no {runtime.META_FILE} there; "
                                       "tools/export_model.py --output DIR writes one")
        self.exported = runtime.ExportedMaskRCNN(export_dir)

    def __call__(self, original_image: np.ndarray):
        image = original_image if self.exported.meta["input_format"] == "BGR" else original_image[:, :, ::-1]
        predictions = self.exported(np.ascontiguousarray(image))
        instances = Instances(tuple(original_image.shape[:2]))
        instances.pred_boxes = Boxes(predictions["boxes"])
        instances.scores = predictions["scores"]
        instances.pred_classes = predictions["classes"]
        instances.pred_masks = predictions["masks"]
        return {"instances": instances}
