"""tools/test_robustness.py's work: evaluate a model on DATASETS.TEST[0] clean and under each
corruption and severity, keeping each finished result in OUTPUT_DIR/robustness.json, so that a run
that is stopped resumes with what is left."""
import json
import logging
import os
import shutil
import time

from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm

from ..data.corruptions import CorruptedImageMapper
from ..evaluation import build_evaluator
from ..evaluation.robustness import plot_robustness, robustness_summary
from ..utils import atomic_write_json
from ..visualization.analysis_sections import ROBUSTNESS_FILE, ROBUSTNESS_PLOT
from .trainer import CityscapesFTTrainer

logger = logging.getLogger("cityscapes_ft")


def _load(path, dataset, weights):
    if not os.path.isfile(path):
        return {"dataset": dataset, "weights": weights, "clean": None, "corruptions": {}}
    with open(path) as f:
        bench = json.load(f)
    if bench.get("dataset") != dataset or bench.get("weights") != weights:
        raise ValueError(f"{path} holds a benchmark of {bench.get('weights')} on {bench.get('dataset')}, not of "
                         f"{weights} on {dataset}: use another OUTPUT_DIR or remove it")
    return bench


def run_robustness_benchmark(cfg, model, corruptions, severities, weights):
    """Clean, then each (corruption, severity) not already in OUTPUT_DIR/robustness.json; after
    each, the file is rewritten (atomically) with mPC/rPC so far. Returns the benchmark (main process)."""
    dataset = cfg.DATASETS.TEST[0]
    path = os.path.join(cfg.OUTPUT_DIR, ROBUSTNESS_FILE)
    comm.synchronize()
    bench = _load(path, dataset, weights)
    jobs = [] if bench.get("clean") else [(None, None)]
    jobs += [(c, s) for c in corruptions for s in severities if str(s) not in bench["corruptions"].get(c, {})]
    kept = len(corruptions) * len(severities) + 1 - len(jobs)
    logger.info(f"Robustness benchmark on {dataset}: {len(jobs)} evaluations to run, {kept} kept from {path}")
    work = os.path.join(cfg.OUTPUT_DIR, "robustness_eval")
    times = []
    for k, (corruption, severity) in enumerate(jobs):
        start = time.perf_counter()
        if corruption is None:
            loader = CityscapesFTTrainer.build_test_loader(cfg, dataset)
        else:
            loader = build_detection_test_loader(DatasetCatalog.get(dataset),
                                                 mapper=CorruptedImageMapper(cfg, corruption, severity),
                                                 num_workers=cfg.DATALOADER.NUM_WORKERS)
        evaluator = build_evaluator(cfg, dataset, output_folder=work)
        results = inference_on_dataset(model, loader, evaluator)
        if comm.is_main_process():
            if corruption is None:
                bench["clean"] = results
            else:
                bench["corruptions"].setdefault(corruption, {})[str(severity)] = results
            robustness_summary(bench)
            atomic_write_json(path, bench)
            shutil.rmtree(work, ignore_errors=True)
            times.append(time.perf_counter() - start)
            left = len(jobs) - k - 1
            eta = sum(times) / len(times) * left
            what = "clean" if corruption is None else f"{corruption} severity {severity}"
            logger.info(f"Robustness: {what} done in {times[-1]:.0f}s ({k + 1}/{len(jobs)}; "
                        f"{left} left, ETA {eta / 60:.1f} min); mPC so far {bench['mPC']}")
        comm.synchronize()
    if comm.is_main_process():
        robustness_summary(bench)
        atomic_write_json(path, bench)
        plot_robustness(bench, os.path.join(cfg.OUTPUT_DIR, ROBUSTNESS_PLOT))
    return bench
