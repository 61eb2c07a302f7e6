"""tools/analyze_model.py: a config's model counted as detectron2's analyze_model.py counts it
(fvcore through detectron2.utils.analysis), on Cityscapes-sized inputs: parameters, FLOPs and
activations, in total, per part of the model and per operator."""
import logging
from collections import Counter
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import transforms as T
from fvcore.nn import ActivationCountAnalysis, flop_count_table, parameter_count, parameter_count_table

from ..checkpoint import load_model
from ..checks import check_config_runnable
from ..data import CITYSCAPES_FRAME, CityscapesDataError
from ..compat import import_detectron2_analysis, import_detectron2_export
from ..errors import WeightsNotAvailable
from .trainer import CityscapesFTTrainer

logger = logging.getLogger(__name__)
TASKS = ("parameter", "flop", "activation", "structure")
PART_DEPTH = 2  # backbone.bottom_up, roi_heads.mask_head, ...


def load_model_for_analysis(cfg, need_weights: bool):
    """cfg's model in eval mode; with need_weights, cfg.MODEL.WEIGHTS loaded as training would
    load it. Weights that cannot be had (no network, no file) leave the model as initialised, with
    a warning: only the mask head's counts depend on them (through how many instances it finds)."""
    try:
        return load_model(cfg, cfg.MODEL.WEIGHTS if need_weights else "", strict=False)
    except WeightsNotAvailable as e:
        logger.warning(f"{e} -- counting with the model as initialised: parameters and the backbone, RPN "
                       "and box head are counted exactly; the mask head runs on as many instances as it finds")
        return load_model(cfg, "", strict=False)


def analysis_inputs(cfg, num_inputs: int, dataset: str = None) -> Tuple[List[Dict], str]:
    """num_inputs test-loader inputs of `dataset` (default: DATASETS.TEST[0]); where its images
    cannot be read, random images of a Cityscapes frame's size, resized as the test loader would.
    Returns (inputs, a description of them)."""
    dataset = dataset or cfg.DATASETS.TEST[0]
    try:
        inputs = []
        for batch in CityscapesFTTrainer.build_test_loader(cfg, dataset):
            inputs.extend(batch)
            if len(inputs) >= num_inputs:
                break
        if inputs:
            return inputs[:num_inputs], f"{len(inputs[:num_inputs])} images of {dataset}"
        reason = f"{dataset} has no images"
    except CityscapesDataError as e:
        reason = str(e).splitlines()[0]
    height, width = CITYSCAPES_FRAME
    logger.warning(f"{reason}: counting on {num_inputs} random {width}x{height} images (a Cityscapes frame) instead")
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    rng = np.random.default_rng(0)
    inputs = []
    for _ in range(num_inputs):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        resized = resize.get_transform(image).apply_image(image)
        inputs.append({"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()), "height": height, "width": width})
    return inputs, f"{num_inputs} random {width}x{height} images ({dataset} could not be read)"


def _parts(counts: Dict[str, float], scale: float) -> Dict[str, float]:
    """Per-module counts down to PART_DEPTH, the tracing adapter's "model." prefix removed."""
    parts = {}
    for name, value in counts.items():
        name = name[len("model."):] if name.startswith("model.") else ("" if name == "model" else name)
        if name and name.count(".") < PART_DEPTH:
            parts[name] = round(value / scale, 4)
    return parts


def count_parameters(model) -> Dict:
    """Total, trainable (after the config's backbone freezing) and per-part parameter counts."""
    counts = parameter_count(model)
    return {"total": counts[""], "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "by_part": {name: n for name, n in counts.items() if name and name.count(".") < PART_DEPTH}}


def _per_image(analyses: Sequence, scale: float) -> Dict:
    """fvcore counts of one analysis per input image, in units of `scale`: the mean total, its
    spread, and the mean per part and per operator (largest first)."""
    totals, by_part, by_operator = [], Counter(), Counter()
    for analysis in analyses:
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        totals.append(analysis.total() / scale)
        by_part.update(_parts(analysis.by_module(), scale))
        by_operator.update({op: v / scale for op, v in analysis.by_operator().items()})
    n = len(totals)
    return {"per_image": round(float(np.mean(totals)), 3), "std": round(float(np.std(totals)), 3),
            "by_part": {k: round(v / n, 3) for k, v in by_part.items()},
            "by_operator": {k: round(v / n, 3) for k, v in by_operator.most_common()}}


def count_flops(model, inputs: Sequence[Dict]) -> Tuple[Dict, str]:
    """GFLOPs per image (mean and spread over the inputs), per part and per operator (detectron2's
    FlopCountAnalysis: one multiply-add is one flop); and fvcore's table of the last input."""
    flop_count_analysis = import_detectron2_analysis().FlopCountAnalysis
    analyses = [flop_count_analysis(model, [inputs_one]) for inputs_one in inputs]
    counts = _per_image(analyses, 1e9)
    return {"gflops_per_image": counts["per_image"], "gflops_std": counts["std"],
            "by_part_gflops": counts["by_part"], "by_operator_gflops": counts["by_operator"]}, \
        flop_count_table(analyses[-1], max_depth=3)


def count_activations(model, inputs: Sequence[Dict]) -> Dict:
    """Millions of activations (output elements of the counted operators) per image, per part and
    per operator: fvcore's ActivationCountAnalysis through detectron2's TracingAdapter."""
    tracing_adapter = import_detectron2_export().TracingAdapter
    analyses = []
    for inputs_one in inputs:
        adapter = tracing_adapter(model, [{"image": inputs_one["image"]}], allow_non_tensor=True)
        analyses.append(ActivationCountAnalysis(adapter, adapter.flattened_inputs))
    counts = _per_image(analyses, 1e6)
    return {"mactivations_per_image": counts["per_image"], "by_part_mactivations": counts["by_part"],
            "by_operator_mactivations": counts["by_operator"]}


def analyze_model(cfg, tasks: Sequence[str], num_inputs: int = 1, dataset: str = None) -> Dict:
    """The counts `tasks` ask for, logged as tables and returned as one dict."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"--tasks {' '.join(unknown)}: expected some of {', '.join(TASKS)}")
    check_config_runnable(cfg)
    counted = {t for t in tasks if t in ("flop", "activation")}
    model = load_model_for_analysis(cfg, need_weights=bool(counted))
    report = {"meta_architecture": cfg.MODEL.META_ARCHITECTURE, "weights": cfg.MODEL.WEIGHTS,
              "test_size": [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST]}
    if "structure" in tasks:
        logger.info("Model structure:\n" + str(model))
    if "parameter" in tasks:
        report["parameters"] = count_parameters(model)
        logger.info("Parameters:\n" + parameter_count_table(model, max_depth=PART_DEPTH + 1))
    if counted:
        inputs, report["inputs"] = analysis_inputs(cfg, num_inputs, dataset)
        report["input_sizes"] = [list(x["image"].shape[-2:]) for x in inputs]
        with torch.no_grad():
            if "flop" in tasks:
                report["flops"], table = count_flops(model, inputs)
                logger.info(f"FLOPs on {report['inputs']} (a multiply-add counts as one):\n{table}")
            if "activation" in tasks:
                report["activations"] = count_activations(model, inputs)
    return report
