#!/usr/bin/env python
"""Robustness benchmark (Michaelis et al. 2019): DATASETS.TEST[0] under the 15 corruptions of
`imagecorruptions` at severities 1-5, official and COCO mask AP for each, mPC and rPC, into
OUTPUT_DIR/robustness.json (a stopped run resumes) and OUTPUT_DIR/report.html.

    python tools/test_robustness.py --config-file configs/cs_ft.yaml MODEL.WEIGHTS model_final.pth
    python tools/test_robustness.py --config-file C --corruptions fog,snow --severities 1,3,5 \
        --num-gpus 4 MODEL.WEIGHTS W DATALOADER.NUM_WORKERS 8

Corruptions run in the loader's DATALOADER.NUM_WORKERS processes (per inference process).
"""
from detectron2.data import MetadataCatalog
from detectron2.utils import comm

from cityscapes_ft.checkpoint import build_checkpointer, load_weights
from cityscapes_ft.data.corruptions import CORRUPTIONS, SEVERITIES
from cityscapes_ft.engine import CityscapesFTTrainer, argument_parser, launch, setup_cfg
from cityscapes_ft.engine.robustness import run_robustness_benchmark
from cityscapes_ft.errors import user_errors_as_messages
from cityscapes_ft.visualization import write_run_report


def main(args):
    args.eval_only = True
    cfg = setup_cfg(args)
    model = CityscapesFTTrainer.build_model(cfg)
    checkpointer = build_checkpointer(cfg, model, save_dir=cfg.OUTPUT_DIR)
    load_weights(checkpointer, cfg.MODEL.WEIGHTS, strict=True, checkpointables=[], sha256=cfg.MODEL.WEIGHTS_SHA256)
    model.eval()
    bench = run_robustness_benchmark(cfg, model, args.corruptions, args.severities, cfg.MODEL.WEIGHTS)
    if comm.is_main_process():
        write_run_report(cfg.OUTPUT_DIR, MetadataCatalog.get(cfg.DATASETS.TEST[0]).thing_classes)
    return bench


if __name__ == "__main__":
    parser = argument_parser(epilog=__doc__)
    # comma-separated: a space-separated list would swallow the trailing KEY VALUE pairs
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS),
                        help=f"comma-separated, of: {','.join(CORRUPTIONS)} (default: all)")
    parser.add_argument("--severities", default="1,2,3,4,5", help="comma-separated, of 1-5 (default: all)")
    args = parser.parse_args()
    args.corruptions = [c for c in args.corruptions.split(",") if c]
    args.severities = [int(s) for s in args.severities.split(",") if s]
    unknown = sorted(set(args.corruptions) - set(CORRUPTIONS)) + [s for s in args.severities if s not in SEVERITIES]
    if unknown:
        parser.error(f"unknown corruptions/severities {unknown}; corruptions: {', '.join(CORRUPTIONS)}; severities 1-5")
    with user_errors_as_messages():
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
