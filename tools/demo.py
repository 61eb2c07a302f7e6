#!/usr/bin/env python
"""Draw a trained model's predictions on images, a video or a webcam stream.

    python tools/demo.py --config-file configs/cs_ft.yaml --input img1.png 'dir/*.png' a_folder \
        --output out/ --confidence-threshold 0.5 MODEL.WEIGHTS output/cs_ft/model_final.pth
    python tools/demo.py --config-file ... --video-input drive.mp4 --output out/drive.mp4 MODEL.WEIGHTS ...
    python tools/demo.py --config-file ... --webcam MODEL.WEIGHTS ...
    python tools/demo.py --config-file ... --exported out/export --input ... --output out/   (tools/export_model.py's model)

Config overrides come as trailing KEY VALUE pairs or after --opts (detectron2's demo spelling).
--confidence-threshold sets the model's test score threshold (MODEL.ROI_HEADS.SCORE_THRESH_TEST),
as detectron2's demo does. Without --output, pictures are shown in a window where there is a display.
"""
import argparse
import logging

from detectron2.utils.logger import setup_logger

from cityscapes_ft.errors import user_errors_as_messages
from cityscapes_ft.export import ExportedInstancePredictor
from cityscapes_ft.lazy import load_config_file
from cityscapes_ft.visualization import DemoInputError, VisualizationDemo, expand_inputs
from cityscapes_ft.visualization.demo import display_available, set_confidence_threshold


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, globs or folders")
    source.add_argument("--video-input", help="a video file")
    source.add_argument("--webcam", action="store_true", help="camera 0, shown in a window")
    parser.add_argument("--output", help="folder (or file for one image / the video); "
                                           "without it, pictures are shown in a window")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score of the instances predicted and drawn")
    parser.add_argument("--exported", metavar="DIR", help="predict with the model tools/export_model.py wrote "
                        "to DIR (ONNX or TorchScript) instead of MODEL.WEIGHTS")
    parser.add_argument("--opts", dest="flag_opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE config overrides (as detectron2's demo takes them)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def main(args):
    setup_logger(name="cityscapes_ft")
    setup_logger(name="fvcore")
    cfg = load_config_file(args.config_file, list(args.opts) + list(args.flag_opts))
    set_confidence_threshold(cfg, args.confidence_threshold)
    cfg.freeze()
    if (args.input or args.video_input) and not args.output and not display_available():
        raise DemoInputError("no display to show pictures on: pass --output FOLDER (or FILE) to write them")
    files = expand_inputs(args.input) if args.input else None
    predictor = ExportedInstancePredictor(args.exported) if args.exported else None
    demo = VisualizationDemo(cfg, args.confidence_threshold, predictor=predictor)
    if files and not args.output:
        demo.show_files(files)
    elif files:
        written = demo.run_on_files(files, args.output)
        logging.getLogger("cityscapes_ft").info(f"Wrote {len(written)} of {len(files)} pictures to {args.output}")
    elif args.video_input and not args.output:
        demo.show_video(args.video_input)
    elif args.video_input:
        logging.getLogger("cityscapes_ft").info(f"Wrote {demo.run_on_video(args.video_input, args.output)}")
    else:
        demo.run_on_webcam()


if __name__ == "__main__":
    with user_errors_as_messages():
        main(get_parser().parse_args())
