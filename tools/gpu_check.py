#!/usr/bin/env python
"""The GPU check: what a CUDA machine gives for cs_ft.yaml, in one run of at most 8 minutes,
into one JSON. Started by tools/gpu_check.sh, which installs what the machine lacks first.

    python tools/gpu_check.py --output OUT [--dry-run]

Measures (each step a process of its own with its share of the time, so one failure or timeout
costs only its own numbers; OUT/gpu_check.json is rewritten after every step):
1. environment: Python, torch, CUDA, GPU, numpy, detectron2;
2. full-resolution (2048x1024) synthetic Cityscapes data;
3. training s/iter and peak memory of cs_ft.yaml: ours fp32 and AMP, frozen backbone, and
   detectron2's DefaultTrainer (tools/benchmark_training.py); training s/iter of the strongest
   starting point on v0.6 (configs/cs_ft_R_101_FPN_400ep_LSJ.py, AMP, 1024x1024 crops);
4. inference s/image at 1024x512 and 2048x1024 (the model alone, CUDA-synchronised);
5. the whole evaluation of 100 images, ours against detectron2's (tools/benchmark_evaluation.py);
6. one 2-process training step over NCCL, if the machine has 2 GPUs.
--dry-run: the same steps on CPU at tiny sizes (AMP, which needs CUDA, is skipped with the reason;
the 2-process step runs over gloo).
"""
import argparse
import atexit
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CS_FT = os.path.join(REPO, "configs", "cs_ft.yaml")
# The strongest starting point that runs on detectron2 v0.6 on one GPU (README, "Stronger starting
# points"): detectron2's R101-FPN 400-epoch LSJ Mask R-CNN (COCO 48.9 / 43.7), timed beside cs_ft.yaml.
STRONGEST = os.path.join(REPO, "configs", "cs_ft_R_101_FPN_400ep_LSJ.py")
BUDGET_SECONDS = 8 * 60

# step -> sizes of the real check and of the dry run
SIZES = {
    "data": {"real": dict(num_train=8, width=2048, height=1024), "dry": dict(num_train=4, width=256, height=128)},
    "training": {"real": dict(iterations=12, warmup=4, opts=[]),
                 "dry": dict(iterations=3, warmup=1, opts=["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN",
                                                           "192", "DATALOADER.NUM_WORKERS", "0"])},
    # iterations of the strongest starting point at its own crop (1024x1024, AMP), the first `warmup` not timed
    "strongest": {"real": dict(iterations=12, warmup=4, opts=[]),
                  "dry": dict(iterations=4, warmup=2, opts=["train.amp.enabled=False", "dataloader.train.num_workers=0",
                                                            "input_sizes.crop_size=128", "input_sizes.short_side=128",
                                                            "input_sizes.max_size=256"])},
    "inference": {"real": dict(sizes=[(512, 1024), (1024, 2048)], images=10),
                  "dry": dict(sizes=[(64, 128), (128, 256)], images=2)},
    "evaluation": {"real": dict(num_images=100, width=2048, height=1024, mapper_images=10),
                   "dry": dict(num_images=4, width=256, height=128, mapper_images=2)},
}


def seconds_per_iteration(metrics_file: str, skip: int) -> dict:
    """Median and mean of the iterations' `time` in a run's metrics.json, after the first `skip`."""
    if not os.path.exists(metrics_file):
        return {}
    with open(metrics_file) as f:
        records = [json.loads(line) for line in f if line.strip()]
    times = sorted(r["time"] for r in records if "time" in r and r.get("iteration", 0) >= skip)
    if not times:
        return {}
    return {"seconds_per_iteration_median": round(times[len(times) // 2], 4),
            "seconds_per_iteration_mean": round(sum(times) / len(times), 4), "iterations_timed": len(times)}


def environment() -> dict:
    import numpy
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "cuda_available": torch.cuda.is_available(), "gpus": torch.cuda.device_count(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info.update(cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0),
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    try:
        import detectron2

        info["detectron2"] = f"{detectron2.__version__} ({os.path.dirname(detectron2.__file__)})"
    except ImportError as e:
        info["detectron2"] = f"not importable: {e}"
    return info


class Check:
    """The JSON being filled, written after every step, and the time left."""

    def __init__(self, output: str, dry_run: bool):
        self.output, self.dry_run = output, dry_run
        self.path = os.path.join(output, "gpu_check.json")
        self.started = time.monotonic()
        self.result = {"dry_run": dry_run, "budget_seconds": BUDGET_SECONDS, "steps": {}}
        os.makedirs(output, exist_ok=True)

    def seconds_left(self) -> float:
        return BUDGET_SECONDS - (time.monotonic() - self.started)

    def record(self, step: str, value: dict):
        self.result["steps"][step] = value
        self.result["elapsed_seconds"] = round(time.monotonic() - self.started, 1)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.result, f, indent=2)
        os.replace(tmp, self.path)
        print(f"[gpu_check] {step}: {json.dumps(value)[:400]}", flush=True)

    def run(self, step: str, args, share: float, env=None, json_file=None, extra=None):
        """Runs `python args...` with `share` of the time left; records its JSON (or why none) and
        `extra` (what the step was run as)."""
        timeout = max(30.0, self.seconds_left() * share)
        started = time.monotonic()
        log = os.path.join(self.output, f"{step}.log")
        try:
            with open(log, "w") as f:
                proc = subprocess.run([sys.executable] + args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                      env=dict(os.environ, **(env or {})), timeout=timeout)
            value = {"returncode": proc.returncode}
            if proc.returncode == 0 and json_file and os.path.exists(json_file):
                with open(json_file) as f:
                    value.update(json.load(f))
            elif proc.returncode != 0:
                with open(log) as f:
                    value["log_tail"] = f.read()[-1500:]
        except subprocess.TimeoutExpired:
            value = {"timed_out_after_seconds": round(timeout)}
        value.update(extra or {}, seconds=round(time.monotonic() - started, 1), log=os.path.basename(log))
        self.record(step, value)
        return value


def measure_inference(sizes, images, dry_run) -> dict:
    """s/image of cs_ft.yaml's model (random weights, eval mode) on random images at each size,
    after one warm-up image; CUDA synchronised around each."""
    import torch

    from cityscapes_ft.config import load_cityscapes_ft_cfg
    from cityscapes_ft.engine import CityscapesFTTrainer

    device = "cpu" if dry_run else "cuda"
    result = {}
    for height, width in sizes:
        cfg = load_cityscapes_ft_cfg(CS_FT, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device,
                                             "INPUT.MIN_SIZE_TEST", str(height), "INPUT.MAX_SIZE_TEST", str(width)])
        model = CityscapesFTTrainer.build_model(cfg).eval()
        batch = [{"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8), "height": height,
                  "width": width}]
        times = []
        with torch.no_grad():
            for i in range(images + 1):
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(batch)
                if device == "cuda":
                    torch.cuda.synchronize()
                if i:
                    times.append(time.perf_counter() - start)
        result[f"{width}x{height}"] = {"seconds_per_image": round(sum(times) / len(times), 4), "images": len(times)}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--dry-run", action="store_true", help="on CPU at tiny sizes")
    parser.add_argument("--step", choices=("inference",), help=argparse.SUPPRESS)  # one step, in-process
    args = parser.parse_args(argv)
    mode = "dry" if args.dry_run else "real"
    if args.step == "inference":
        result = measure_inference(**SIZES["inference"][mode], dry_run=args.dry_run)
        with open(os.path.join(args.output, "inference.json"), "w") as f:
            json.dump(result, f)
        return

    check = Check(args.output, args.dry_run)
    env = environment()
    check.record("environment", env)
    if not args.dry_run and not env["cuda_available"]:
        check.record("stopped", {"reason": "no CUDA device: run with --dry-run on a CPU machine"})
        raise SystemExit(2)
    device = "cpu" if args.dry_run else "cuda"
    data_root = tempfile.mkdtemp(prefix="gpu_check_data_")
    atexit.register(shutil.rmtree, data_root, ignore_errors=True)
    sizes = SIZES["data"][mode]
    check.run("data", ["datasets/make_synthetic_cityscapes.py", "--output", os.path.join(data_root, "cityscapes"),
                       "--num-train", str(sizes["num_train"]), "--num-val", "2", "--width", str(sizes["width"]),
                       "--height", str(sizes["height"])], share=0.1)

    training = SIZES["training"][mode]
    variants = "ours,ours_frozen,detectron2" + ("" if args.dry_run else ",ours_amp,detectron2_amp")
    out = os.path.join(args.output, "training")
    check.run("training", ["tools/benchmark_training.py", "--config-file", CS_FT, "--variants", variants,
                           "--iterations", str(training["iterations"]), "--warmup", str(training["warmup"]),
                           "--repeats", "1", "--data-root", data_root, "--output", out,
                           "MODEL.DEVICE", device, "MODEL.WEIGHTS", "", "SOLVER.IMS_PER_BATCH", "2"]
              + training["opts"], share=0.4, json_file=os.path.join(out, "benchmark_training.json"),
              extra={"amp": "skipped: AMP needs CUDA"} if args.dry_run else None)

    strongest = SIZES["strongest"][mode]
    out = os.path.join(args.output, "strongest_starting_point")
    value = check.run("strongest_starting_point", [
        "tools/lazyconfig_train_net.py", "--config-file", STRONGEST, f"train.device={device}", "train.init_checkpoint=",
        f"train.max_iter={strongest['iterations']}", "train.eval_period=0", "dataloader.test.dataset.names=[]",
        "train.checkpointer.period=100000", "dataloader.train.total_batch_size=2", "lr_multiplier.warmup_length=0",
        "CITYSCAPES_FT.LOG_PERIOD=1", f"train.output_dir={out}"] + strongest["opts"],
        share=0.25, env={"DETECTRON2_DATASETS": data_root}, extra={"config": os.path.relpath(STRONGEST, REPO)})
    value.update(seconds_per_iteration(os.path.join(out, "metrics.json"), skip=strongest["warmup"]))
    check.record("strongest_starting_point", value)

    check.run("inference", ["tools/gpu_check.py", "--output", args.output, "--step", "inference"]
              + (["--dry-run"] if args.dry_run else []), share=0.2, json_file=os.path.join(args.output, "inference.json"))

    evaluation = SIZES["evaluation"][mode]
    out = os.path.join(args.output, "evaluation")
    check.run("evaluation", ["tools/benchmark_evaluation.py", "--num-images", str(evaluation["num_images"]),
                             "--width", str(evaluation["width"]), "--height", str(evaluation["height"]),
                             "--mapper-images", str(evaluation["mapper_images"]), "--output", out],
              share=0.8, json_file=os.path.join(out, "benchmark_evaluation.json"))

    if args.dry_run or env["gpus"] >= 2:
        opts = ["MODEL.DEVICE", device, "MODEL.WEIGHTS", "", "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "2",
                "SOLVER.REFERENCE_WORLD_SIZE", "0", "CITYSCAPES_FT.SCHEDULE.UNIT", "iterations", "TEST.EVAL_PERIOD", "0",
                "OUTPUT_DIR", os.path.join(args.output, "two_process_step")] + training["opts"]
        check.run("two_process_step", ["tools/train_net.py", "--config-file", CS_FT, "--num-gpus", "2",
                                       "--dist-url", "auto"] + opts, share=1.0, env={"DETECTRON2_DATASETS": data_root},
                  extra={"backend": "gloo (CPU)" if args.dry_run else "nccl"})
    else:
        check.record("two_process_step", {"skipped": f"{env['gpus']} GPU on this machine; it needs 2"})
    failed = [s for s, v in check.result["steps"].items() if v.get("returncode") not in (None, 0) or "timed_out_after_seconds" in v]
    check.result["failed_steps"] = failed
    check.record("done", {"failed_steps": failed})
    print(f"[gpu_check] wrote {check.path}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
