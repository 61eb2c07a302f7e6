"""tools/benchmark_corruptions.py's work: how long the `imagecorruptions` package takes to corrupt
one image, against how long the model takes to run on it. The robustness benchmark corrupts each
image in a test-loader worker (DATALOADER.NUM_WORKERS of them) while the model runs on the one
before, so it is bounded by inference when workers >= corruption time / inference time: that
ratio, per corruption, is the number of workers it needs."""
import math
import multiprocessing
import statistics
import time

import cv2

from ..checkpoint.loading import load_model
from ..data.corruptions import corrupt_image, corruption_seed
from ..visualization.drawing import InstancePredictor


def _corrupt_and_send_seconds(image, corruption, severity, conn):
    cv2.setNumThreads(1)  # as one loader worker among several: one thread each
    start = time.perf_counter()
    corrupt_image(image, corruption, severity, corruption_seed(corruption, severity, "benchmark"))
    conn.send(time.perf_counter() - start)


def time_corruption(image, corruption, severity, timeout_s):
    """Seconds the package takes to corrupt `image` (HxWx3 uint8 RGB) in a child process, or None
    if it had not finished after `timeout_s` (the child is then stopped). The child is forked: call
    this before torch has started its thread pool (before any inference) in this process."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_corrupt_and_send_seconds, args=(image, corruption, severity, send), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(timeout_s):
            return None
        try:
            return receive.recv()
        except EOFError:  # the child died without an answer
            child.join()
            raise RuntimeError(f"corrupting with {corruption} failed (exit code {child.exitcode})") from None
    finally:
        if child.is_alive():
            child.terminate()
        child.join()
        receive.close()


def time_inference(cfg, model, image_bgr, repeats=3):
    """Median seconds of `repeats` runs of the model (test-time resize of cfg, as the test loader
    does it) on `image_bgr`, after one warm-up run."""
    predictor = InstancePredictor(cfg, model)
    predictor(image_bgr)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor(image_bgr)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def corruption_inference_ratios(corruption_seconds, inference_seconds):
    """{corruption: {"seconds", "ratio", "workers_needed"}}: ratio = corruption / inference time,
    workers_needed = ceil(ratio) (at least 1); a corruption that timed out has seconds None and a
    ratio that is at least timeout / inference (`"ratio_at_least"`)."""
    rows = {}
    for name, (seconds, timeout_s) in corruption_seconds.items():
        if seconds is None:
            rows[name] = {"seconds": None, "timed_out_after_s": timeout_s,
                          "ratio_at_least": timeout_s / inference_seconds,
                          "workers_needed_at_least": max(1, math.ceil(timeout_s / inference_seconds))}
        else:
            rows[name] = {"seconds": seconds, "ratio": seconds / inference_seconds,
                          "workers_needed": max(1, math.ceil(seconds / inference_seconds))}
    return rows


def benchmark_corruptions(cfg, image_bgr, corruptions, severity, timeout_s, repeats=3, log=print):
    """Each corruption's time on `image_bgr` (one thread, stopped after timeout_s), then the
    model of cfg (cfg.MODEL.WEIGHTS loaded) at cfg's test size and at the image's own size, with
    the ratios against each: {size label: {"min_size_test", "max_size_test", "seconds",
    "corruptions": corruption_inference_ratios(...)}}."""
    corruption_seconds = {}
    for name in corruptions:  # before any inference: the children are forked
        seconds = time_corruption(image_bgr[:, :, ::-1], name, severity, timeout_s)
        corruption_seconds[name] = (seconds, timeout_s)
        log(f"{name}: " + (f"{seconds:.2f} s" if seconds is not None else f"stopped after {timeout_s:g} s"))
    cfg = cfg.clone()
    cfg.defrost()
    model = load_model(cfg)
    height, width = image_bgr.shape[:2]
    sizes = {"config_test_size": (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST),
             "image_size": (min(height, width), max(height, width))}
    inference = {}
    for label, (min_size, max_size) in sizes.items():
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = min_size, max_size
        seconds = time_inference(cfg, model, image_bgr, repeats)
        inference[label] = {"min_size_test": min_size, "max_size_test": max_size, "seconds": seconds,
                            "corruptions": corruption_inference_ratios(corruption_seconds, seconds)}
        log(f"inference at {label} (test size {min_size}, max {max_size}): {seconds:.3f} s")
    return inference


def format_corruption_timing(inference):
    """benchmark_corruptions' result as a table: seconds per corruption and its ratio to each
    inference time (">" where the corruption was stopped)."""
    labels = list(inference)
    names = list(inference[labels[0]]["corruptions"])
    lines = ["| corruption | seconds | " + " | ".join(
        f"ratio to inference at {inference[k]['min_size_test']} ({inference[k]['seconds']:.2f} s)" for k in labels) + " |",
             "|:--|--:|" + "--:|" * len(labels)]
    for name in names:
        first = inference[labels[0]]["corruptions"][name]
        seconds = f"{first['seconds']:.2f}" if first["seconds"] is not None else f"> {first['timed_out_after_s']:g}"
        cells = []
        for k in labels:
            row = inference[k]["corruptions"][name]
            cells.append(f"{row['ratio']:.1f}" if "ratio" in row else f"> {row['ratio_at_least']:.0f}")
        lines.append(f"| {name} | {seconds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
