"""Runs a Mask R-CNN that tools/export_model.py exported, with torch and torchvision only
(onnxruntime for an ONNX model): no detectron2, no cityscapes_ft. The export copies this file
into its folder as `cityscapes_ft_runtime.py`, so that folder is all a deployment needs:

    python cityscapes_ft_runtime.py EXPORT_DIR --input a.png b.png --output predictions.json

or, in Python: `predictor = ExportedMaskRCNN(EXPORT_DIR); predictions = predictor(image_bgr_hwc)`.

The exported graph holds the network from the normalised, resized image to per-detection boxes,
scores, classes and 28x28 mask probabilities (in the resized image's coordinates). What it cannot
carry, this file does: the test-time resize (shortest edge to min_size, longest at most max_size,
bilinear with antialiasing as detectron2's PIL resize does) before, and after it the boxes scaled
back to the image and each mask pasted into the image at its box and thresholded.
"""
import argparse
import json
import os
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

META_FILE = "export_meta.json"
OUTPUT_NAMES = ("boxes", "scores", "classes", "mask_probs")


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """The size detectron2's ResizeShortestEdge gives at test time: the shorter side to min_size,
    then both scaled down if the longer side exceeds max_size, rounded to the nearest pixel."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_image(image_chw: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """A uint8 (C, H, W) image resized to `size` with antialiased bilinear interpolation, rounded
    to uint8 as PIL does; float32 out (the exported graph's input)."""
    if tuple(image_chw.shape[-2:]) == tuple(size):
        return image_chw.float()
    resized = F.interpolate(image_chw[None].float(), size=size, mode="bilinear", align_corners=False,
                            antialias=True)[0]
    return resized.round().clamp(0, 255)


def paste_masks(mask_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                threshold: float = 0.5) -> torch.Tensor:
    """(N, 1, M, M) mask probabilities, each covering its box (x0, y0, x1, y1) in image pixels ->
    (N, height, width) bool masks: every pixel centre inside a box samples its mask bilinearly."""
    masks = torch.zeros((len(boxes), height, width), dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        left, top = max(int(x0), 0), max(int(y0), 0)
        right, bottom = min(int(x1) + 1, width), min(int(y1) + 1, height)
        if right <= left or bottom <= top:
            continue
        # Pixel centres in the box's normalised [-1, 1] frame, which grid_sample reads.
        xs = (torch.arange(left, right, dtype=torch.float32) + 0.5 - x0) / max(x1 - x0, 1e-6) * 2 - 1
        ys = (torch.arange(top, bottom, dtype=torch.float32) + 0.5 - y0) / max(y1 - y0, 1e-6) * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
        region = F.grid_sample(mask_probs[i:i + 1].float(), grid, mode="bilinear", align_corners=False)
        masks[i, top:bottom, left:right] = region[0, 0] >= threshold
    return masks


class ExportedMaskRCNN:
    """An exported model folder (export_meta.json and the model file it names) as a predictor:
    a (H, W, 3) uint8 image in the channel order of export_meta.json's "input_format" in, the
    detections at the image's own size out."""

    def __init__(self, export_dir: str, num_threads: int = 0):
        with open(os.path.join(export_dir, META_FILE)) as f:
            self.meta = json.load(f)
        path = os.path.join(export_dir, self.meta["file"])
        self.format = self.meta["format"]
        if self.format == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            if num_threads:
                options.intra_op_num_threads = num_threads
            self._session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        elif self.format == "torchscript":
            import torchvision  # noqa: F401  (registers the roi_align and nms ops the graph calls)

            self._module = torch.jit.load(path, map_location="cpu").eval()
        else:
            raise ValueError(f"{os.path.join(export_dir, META_FILE)}: unknown format '{self.format}'")

    @property
    def class_names(self) -> List[str]:
        """The names of the model's classes, in class-index order."""
        return self.meta["class_names"]

    def run_network(self, image_chw: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The exported graph on a resized (C, H, W) float image: (boxes, scores, classes,
        mask_probs), boxes in that image's pixels."""
        image_chw = image_chw.float().contiguous()
        if self.format == "onnx":
            outputs = self._session.run(None, {self._session.get_inputs()[0].name: image_chw.numpy()})
            return tuple(torch.from_numpy(o) for o in outputs)
        with torch.no_grad():
            return tuple(self._module(image_chw))

    def __call__(self, image_hwc) -> Dict[str, torch.Tensor]:
        """image: (H, W, 3) uint8 (numpy array or tensor) -> {"boxes" (N, 4) xyxy, "scores",
        "classes", "masks" (N, H, W) bool} at the image's size."""
        image = torch.as_tensor(image_hwc).permute(2, 0, 1)
        height, width = image.shape[-2:]
        size = resized_shape(height, width, self.meta["min_size_test"], self.meta["max_size_test"])
        boxes, scores, classes, mask_probs = self.run_network(resize_image(image, size))
        boxes = boxes.clone()
        boxes[:, 0::2] = (boxes[:, 0::2] * (width / size[1])).clamp(0, width)
        boxes[:, 1::2] = (boxes[:, 1::2] * (height / size[0])).clamp(0, height)
        masks = paste_masks(mask_probs, boxes, height, width, self.meta.get("mask_threshold", 0.5))
        return {"boxes": boxes, "scores": scores, "classes": classes.long(), "masks": masks}


def read_image(path: str, input_format: str) -> torch.Tensor:
    """An image file as (H, W, 3) uint8 in `input_format` ("BGR" or "RGB") order."""
    from torchvision.io import ImageReadMode, read_image as tv_read_image

    rgb = tv_read_image(path, mode=ImageReadMode.RGB).permute(1, 2, 0)
    return rgb.flip(-1) if input_format == "BGR" else rgb


def main(argv=None):
    """The command line: predictions on image files written to one JSON file."""
    parser = argparse.ArgumentParser(description="Predict with an exported cityscapes-ft model (torch only).")
    parser.add_argument("export_dir")
    parser.add_argument("--input", nargs="+", required=True, help="image files")
    parser.add_argument("--output", required=True, help="JSON file: per image, each instance's class, "
                        "score, box and mask area")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    args = parser.parse_args(argv)
    predictor = ExportedMaskRCNN(args.export_dir)
    results = []
    for path in args.input:
        p = predictor(read_image(path, predictor.meta["input_format"]))
        keep = p["scores"] >= args.score_threshold
        results.append({"file_name": path, "instances": [
            {"class": predictor.class_names[int(c)], "score": round(float(s), 4),
             "box_xyxy": [round(float(v), 2) for v in b], "mask_area": int(m.sum())}
            for b, s, c, m in zip(p["boxes"][keep], p["scores"][keep], p["classes"][keep], p["masks"][keep])]})
        print(f"{path}: {len(results[-1]['instances'])} instances")
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, args.output)


if __name__ == "__main__":
    main()
