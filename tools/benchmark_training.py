#!/usr/bin/env python
"""Seconds per training iteration of cityscapes-ft's trainer against detectron2's DefaultTrainer
on the same config and data, measured in the same run, and the frozen-backbone speed-up; on CUDA
also with and without AMP, with peak GPU memory; writes <output>/benchmark_training.json.

    python tools/benchmark_training.py                      # CPU, the demo config
    python tools/benchmark_training.py --config-file configs/cs_ft.yaml --variants ours,ours_amp \
        --data-root datasets MODEL.DEVICE cuda MODEL.WEIGHTS ""   # GPU: full resolution, AMP
"""
import argparse
import atexit
import os
import shutil
import statistics
import tempfile
import time

import torch
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, HookBase

from cityscapes_ft.config import command_line_keys, load_cityscapes_ft_cfg
from cityscapes_ft.data import build_mapper
from cityscapes_ft.data.synthetic import make_synthetic_cityscapes
from cityscapes_ft.engine import resolve_config
from cityscapes_ft.engine.trainer import CityscapesFTTrainer
from cityscapes_ft.utils import atomic_write_json

class DefaultTrainerWithOurMapper(DefaultTrainer):
    """Plain DefaultTrainer fed by our mapper: the difference to ours is then the trainer alone."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_mapper(cfg, is_train=True))


# name -> (trainer class, extra config overrides); "{iters}" is the run's length
VARIANTS = {
    "detectron2": (DefaultTrainer, []),
    "detectron2_our_mapper": (DefaultTrainerWithOurMapper, []),
    "ours": (CityscapesFTTrainer, []),
    "ours_frozen": (CityscapesFTTrainer, ["CITYSCAPES_FT.BACKBONE_FREEZE.ITERS", "{iters}"]),
    "ours_frozen_fpn": (CityscapesFTTrainer, ["CITYSCAPES_FT.BACKBONE_FREEZE.ITERS", "{iters}",
                                              "CITYSCAPES_FT.BACKBONE_FREEZE.INCLUDE_FPN", "True"]),
    "detectron2_amp": (DefaultTrainer, ["SOLVER.AMP.ENABLED", "True"]),
    "ours_amp": (CityscapesFTTrainer, ["SOLVER.AMP.ENABLED", "True"]),
}
RATIOS = {
    # name: (numerator, denominator), both in s/iter
    "overhead_ours_vs_detectron2": ("ours", "detectron2"),
    "trainer_overhead_same_mapper": ("ours", "detectron2_our_mapper"),
    "frozen_backbone_speedup": ("ours", "ours_frozen"),
    "frozen_backbone_and_fpn_speedup": ("ours", "ours_frozen_fpn"),
    "amp_speedup": ("ours", "ours_amp"),
    "amp_overhead_ours_vs_detectron2": ("ours_amp", "detectron2_amp"),
}


class StepClock(HookBase):
    """Wall time of each whole iteration (data, step and every hook), start to start."""

    def __init__(self):
        self.starts = []

    def before_step(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())

    def after_train(self):
        self.before_step()

    def seconds_per_iteration(self, skip: int) -> float:
        steps = [b - a for a, b in zip(self.starts, self.starts[1:])][skip:]
        return statistics.median(steps)


def run_variant(name, args, out_dir):
    trainer_cls, extra = VARIANTS[name]
    opts = list(args.opts) + [
        "OUTPUT_DIR", out_dir, "CITYSCAPES_FT.SCHEDULE.UNIT", "iterations",
        "SOLVER.MAX_ITER", str(args.iterations), "SOLVER.STEPS", "()",
        "SOLVER.CHECKPOINT_PERIOD", str(10 * args.iterations), "SOLVER.REFERENCE_WORLD_SIZE", "0",
        "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SEED", "1",
    ] + [o.format(iters=args.iterations) for o in extra]
    cfg = load_cityscapes_ft_cfg(args.config_file, opts)
    # as tools/train_net.py resolves it: a recipe's schedule at the batch of this run
    cfg, _ = resolve_config(cfg, command_line_keys(opts))
    clock = StepClock()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([clock])
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    del trainer
    return clock.seconds_per_iteration(args.warmup), peak


def run(args):
    if args.data_root:
        os.environ["DETECTRON2_DATASETS"] = args.data_root
    else:
        root = tempfile.mkdtemp(prefix="cityscapes_ft_train_bench_")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        make_synthetic_cityscapes(os.path.join(root, "cityscapes"), num_train=args.num_train, num_val=1,
                                  width=args.width, height=args.height, seed=0)
        os.environ["DETECTRON2_DATASETS"] = root
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    times = {v: [] for v in variants}
    peaks = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="cityscapes_ft_train_bench_out_") as tmp:
        for repeat in range(args.repeats):
            for v in variants:  # interleaved, so drift of the machine hits every variant alike
                s, peak = run_variant(v, args, os.path.join(tmp, f"{v}_{repeat}"))
                times[v].append(s)
                peaks[v].append(peak)
                print(f"[benchmark] repeat {repeat + 1}/{args.repeats} {v}: {s:.3f} s/iter"
                      + (f", peak GPU memory {peak:.0f} MiB" if peak is not None else ""), flush=True)
    median = {v: statistics.median(t) for v, t in times.items()}
    ratios = {name: median[a] / median[b] for name, (a, b) in RATIOS.items() if a in median and b in median}
    result = {
        "config": args.config_file, "opts": list(args.opts), "iterations": args.iterations,
        "warmup_iterations_skipped": args.warmup, "repeats": args.repeats,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "seconds_per_iteration": times, "median_seconds_per_iteration": median,
        "peak_gpu_memory_mib": {v: max(p) for v, p in peaks.items() if p and p[0] is not None},
        "ratios": ratios,
    }
    for name, value in ratios.items():
        a, b = RATIOS[name]
        print(f"[benchmark] {name}: {value:.3f} ({a} {median[a]:.3f} s/iter / {b} {median[b]:.3f} s/iter)")
    path = os.path.join(args.output, "benchmark_training.json")
    atomic_write_json(path, result)
    print(f"Wrote {path}")
    return result


def argument_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", default="configs/quick_schedules/cs_ft_cpu_demo.yaml")
    p.add_argument("--variants", default="detectron2,detectron2_our_mapper,ours,ours_frozen,ours_frozen_fpn",
                   help=f"comma-separated, from: {', '.join(VARIANTS)} (*_amp need CUDA)")
    p.add_argument("--iterations", type=int, default=40, help="iterations per run")
    p.add_argument("--warmup", type=int, default=5, help="first iterations left out of the median")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-root", default="", help="DETECTRON2_DATASETS to use (default: make synthetic data)")
    p.add_argument("--num-train", type=int, default=16)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--output", default="output/benchmark_training")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every variant")
    return p


def main(argv=None):
    run(argument_parser().parse_args(argv))


if __name__ == "__main__":
    main()
