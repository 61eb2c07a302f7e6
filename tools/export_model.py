#!/usr/bin/env python
"""Export a fine-tuned Mask R-CNN for deployment, with a torch-only runner beside it.

    python tools/export_model.py --config-file configs/cs_ft.yaml --output out/export \
        [--format onnx|torchscript|torch_export] [--eval [--eval-dataset NAME]] MODEL.WEIGHTS output/cs_ft/model_final.pth

Writes <output>/model.onnx (or model.ts), export_meta.json (what the graph takes and returns, and
a check of it against the PyTorch model on a sample image) and cityscapes_ft_runtime.py, which
runs the model with torch/torchvision (onnxruntime for ONNX) alone:
    python out/export/cityscapes_ft_runtime.py out/export --input a.png --output predictions.json
Pictures as the demo draws them: tools/demo.py --exported out/export --config-file ... --input ...
--eval evaluates the original and the exported model on --eval-dataset (default: the config's
first DATASETS.TEST) and writes <output>/export_eval.json: official and COCO AP and CPU s/image of both.
"""
import json
import logging

from detectron2.utils.logger import setup_logger

from cityscapes_ft.engine import argument_parser
from cityscapes_ft.errors import user_errors_as_messages
from cityscapes_ft.export import FORMATS, evaluate_export, export_model
from cityscapes_ft.lazy import load_config_file


def main(args):
    setup_logger(name="cityscapes_ft")
    setup_logger(name="detectron2")
    cfg = load_config_file(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"  # the exported graph and its runner are CPU ones
    cfg.freeze()
    meta = export_model(cfg, args.output, args.format)
    print(json.dumps(meta, indent=2))
    if args.eval:
        dataset = args.eval_dataset or cfg.DATASETS.TEST[0]
        report = evaluate_export(cfg, args.output, dataset)
        logging.getLogger("cityscapes_ft").info(
            f"{dataset}: official AP original {report['original'].get('cityscapes', {}).get('AP')}, exported "
            f"{report['exported'].get('cityscapes', {}).get('AP')}; largest AP difference "
            f"{report['largest_ap_difference']}; s/image {report['original']['seconds_per_image']} vs "
            f"{report['exported']['seconds_per_image']} -> {args.output}/export_eval.json")


if __name__ == "__main__":
    parser = argument_parser(epilog=__doc__)
    parser.add_argument("--output", required=True, help="folder for the model file, export_meta.json and the runner")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--eval", action="store_true", help="also evaluate the original and the exported model")
    parser.add_argument("--eval-dataset", metavar="NAME", help="registered dataset of --eval (default: DATASETS.TEST[0])")
    args = parser.parse_args()
    with user_errors_as_messages():
        main(args)
