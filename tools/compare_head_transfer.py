#!/usr/bin/env python
"""Does class-aware head transfer help? A reproducible stand-in for COCO -> Cityscapes, on CPU.

    python tools/compare_head_transfer.py [--pretrain-iters 500 --finetune-iters 150]

Writes output/head_transfer_benefit/head_transfer_benefit.{json,md}.

No COCO weights can be downloaded here, so the experiment makes its own "COCO model":
1. synthetic scenes labelled in COCO's 80-class space (riders labelled person, as COCO does);
   a small Mask R-CNN is trained on them and saved in detectron2 model-zoo format (.pkl of numpy
   arrays, "matching_heuristics");
2. that checkpoint is fine-tuned on synthetic Cityscapes (other scenes, another seed) twice, same
   seed and budget: with the class map (rider <- person, ...) and without (plain detectron2);
3. both are evaluated straight after loading (iteration 0) and after the fine-tuning.
"""
import argparse
import logging
import os
import pickle
import time

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from cityscapes_ft.config import load_cityscapes_ft_cfg
from cityscapes_ft.data.cityscapes import CITYSCAPES_THING_CLASSES, load_cityscapes_ft_instances
from cityscapes_ft.data.synthetic import make_synthetic_cityscapes, synthetic_dataset_matches
from cityscapes_ft.engine import CityscapesFTTrainer
from cityscapes_ft.utils import atomic_open, atomic_write_json

# Where each Cityscapes class sits in COCO's label space (COCO has no rider: riders are persons).
CITYSCAPES_TO_COCO_NAME = {
    "person": "person", "rider": "person", "car": "car", "truck": "truck", "bus": "bus",
    "train": "train", "motorcycle": "motorcycle", "bicycle": "bicycle",
}
CLASS_MAP = ("person", "person", "car", "truck", "bus", "train", "motorcycle", "bicycle")
COCO80_TRAIN = "head_transfer_synthetic_coco80_train"
logger = logging.getLogger("cityscapes_ft.compare_head_transfer")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def register_coco80_synthetic(name, root, split):
    coco = MetadataCatalog.get("coco_2017_train").thing_classes
    to_coco = [coco.index(CITYSCAPES_TO_COCO_NAME[c]) for c in CITYSCAPES_THING_CLASSES]

    def load():
        dicts = load_cityscapes_ft_instances(root, split)
        for d in dicts:
            for a in d["annotations"]:
                a["category_id"] = to_coco[a["category_id"]]
        return dicts

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(thing_classes=list(coco))


def save_as_model_zoo_pkl(model, path):
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    with atomic_open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "cityscapes-ft stand-in COCO pretraining",
                     "matching_heuristics": True}, f)


def summary(res):
    return {"official_mask_AP": res["cityscapes"]["AP"], "box_AP": res["bbox"]["AP"],
            "mask_AP": res["segm"]["AP"], "mask_AP_rider": res["segm"]["AP-rider"],
            "official_AP_rider": res["cityscapes"]["AP-rider"]}


def fine_tune(args, weights, class_map, out):
    cfg = load_cityscapes_ft_cfg(args.config_file, [
        "MODEL.WEIGHTS", weights, "OUTPUT_DIR", out,
        "MODEL.HEAD_TRANSFER.CLASS_MAP", str(tuple(class_map)),
        "SOLVER.MAX_ITER", args.finetune_iters, "SOLVER.STEPS", f"({int(args.finetune_iters * 0.75)},)",
        "SOLVER.BASE_LR", args.finetune_lr, "SOLVER.WARMUP_ITERS", min(50, args.finetune_iters // 4),
        "SOLVER.CHECKPOINT_PERIOD", 100000, "TEST.EVAL_PERIOD", 0, "CITYSCAPES_FT.VIS_NUM_IMAGES", 0,
        "SEED", args.seed,
    ])
    cfg.freeze()
    seed_all_rng(args.seed)
    trainer = CityscapesFTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    report = trainer.checkpointer.last_load_report
    at_start = CityscapesFTTrainer.test(cfg, trainer.model, iteration=0, checkpoint=weights)
    trainer.train()
    at_end = trainer._last_eval_results
    return {"iteration_0": summary(at_start), f"iteration_{args.finetune_iters}": summary(at_end),
            "transferred_tensors": len(report.transferred), "fresh_tensors": len(report.fresh)}


def run(args):
    setup_logger(name="cityscapes_ft")
    setup_logger(name="detectron2")
    start = time.perf_counter()
    os.makedirs(args.output, exist_ok=True)
    pre_root = os.path.join(args.output, "data_coco80", "cityscapes")
    ft_root = os.path.join(args.data_root, "cityscapes")
    pre_spec = dict(num_train=args.pretrain_images, num_val=0, width=512, height=256, seed=args.seed + 100)
    ft_spec = dict(num_train=args.finetune_images, num_val=24, width=512, height=256, seed=args.seed)
    for root, spec in ((pre_root, pre_spec), (ft_root, ft_spec)):
        if not synthetic_dataset_matches(root, **spec):
            make_synthetic_cityscapes(root, **spec)
    os.environ["DETECTRON2_DATASETS"] = os.path.abspath(args.data_root)
    register_coco80_synthetic(COCO80_TRAIN, pre_root, "train")

    # 1. the stand-in COCO model
    pkl = os.path.join(args.output, "stand_in_coco_model_final.pkl")
    if not os.path.isfile(pkl):
        cfg = load_cityscapes_ft_cfg(args.config_file, [
            "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", 80,
            "DATASETS.TRAIN", f"('{COCO80_TRAIN}',)", "DATASETS.TEST", "()",
            "SOLVER.MAX_ITER", args.pretrain_iters, "SOLVER.STEPS", f"({int(args.pretrain_iters * 0.8)},)",
            "SOLVER.CHECKPOINT_PERIOD", 100000, "OUTPUT_DIR", os.path.join(args.output, "pretrain"),
            "CITYSCAPES_FT.VIS_NUM_IMAGES", 0, "SEED", args.seed,
        ])
        cfg.freeze()
        seed_all_rng(args.seed)
        trainer = CityscapesFTTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        save_as_model_zoo_pkl(trainer.model, pkl)

    # 2-3. fine-tune with and without the class map
    results = {
        "with_transfer": fine_tune(args, pkl, CLASS_MAP, os.path.join(args.output, "with_transfer")),
        "without_transfer": fine_tune(args, pkl, (), os.path.join(args.output, "without_transfer")),
    }
    results["settings"] = {k: v for k, v in vars(args).items()}
    results["minutes"] = (time.perf_counter() - start) / 60
    atomic_write_json(os.path.join(args.output, "head_transfer_benefit.json"), results)
    table = format_table(results, args.finetune_iters)
    with open(os.path.join(args.output, "head_transfer_benefit.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return results


def format_table(results, iters):
    lines = [
        "| init | iteration | official mask AP | COCO box AP | COCO mask AP | rider mask AP |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in (("without_transfer", "plain detectron2 (heads skipped)"),
                       ("with_transfer", "class-aware transfer")):
        for it in ("iteration_0", f"iteration_{iters}"):
            r = results[key][it]
            lines.append(f"| {label} | {it.split('_')[1]} | {r['official_mask_AP']:.1f} | "
                         f"{r['box_AP']:.1f} | {r['mask_AP']:.1f} | {r['mask_AP_rider']:.1f} |")
    return "\n".join(lines)


def argument_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", default=os.path.join(REPO, "configs", "quick_schedules", "cs_ft_cpu_demo.yaml"))
    p.add_argument("--output", default=os.path.join(REPO, "output", "head_transfer_benefit"))
    p.add_argument("--data-root", default=os.path.join(REPO, "output", "head_transfer_benefit", "data"),
                   help="DETECTRON2_DATASETS for the fine-tuning data (kept apart from the demo's)")
    p.add_argument("--pretrain-images", type=int, default=96)
    p.add_argument("--pretrain-iters", type=int, default=500)
    p.add_argument("--finetune-images", type=int, default=96)
    p.add_argument("--finetune-iters", type=int, default=150)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=7)
    return p


def main(argv=None):
    run(argument_parser().parse_args(argv))


if __name__ == "__main__":
    main()
