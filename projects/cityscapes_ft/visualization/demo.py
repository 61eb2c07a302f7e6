"""The demo: a trained model's predictions drawn on images, videos or a webcam stream."""
import glob
import logging
import os
import sys
from typing import Iterable, Iterator, List

import cv2
import numpy as np
import tqdm
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils

from ..checkpoint import load_model
from ..errors import CityscapesFTError
from .drawing import InstancePredictor, draw_instances

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
WINDOW = "cityscapes-ft"


class DemoInputError(CityscapesFTError, ValueError):
    """An input of tools/demo.py that cannot be read (a path, glob or video)."""
    pass


def expand_inputs(patterns: List[str]) -> List[str]:
    """Files, globs and folders (their images, recursively) -> sorted list of files."""
    files = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [p for p in glob.glob(os.path.join(pattern, "**", "*"), recursive=True)
                     if p.lower().endswith(IMAGE_EXTENSIONS)]
        else:
            found = glob.glob(os.path.expanduser(pattern)) or ([pattern] if os.path.exists(pattern) else [])
        if not found:
            raise DemoInputError(f"--input '{pattern}' matches no file")
        files.extend(sorted(found))
    return files


def set_confidence_threshold(cfg, threshold: float):
    """The test score threshold of every detector head a config may hold, as detectron2's demo sets
    it: the model then predicts only instances at least that confident."""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = threshold


def display_available() -> bool:
    """A screen to show windows on, and an OpenCV built with windows (the -headless wheel is not)."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform in ("darwin", "win32")):
        return False
    try:
        cv2.namedWindow(WINDOW)
        cv2.destroyWindow(WINDOW)
        return True
    except cv2.error:
        return False


def show_in_window(pictures: Iterable[np.ndarray], wait_ms: int = 0):
    """Shows RGB pictures one after another in one window: each for wait_ms (0: until a key is
    pressed); Esc stops. The window is closed at the end."""
    try:
        for picture in pictures:
            cv2.imshow(WINDOW, picture[:, :, ::-1])
            if cv2.waitKey(wait_ms) == 27:  # Esc
                break
    finally:
        cv2.destroyAllWindows()


class VisualizationDemo:
    """Builds the model of `cfg`, loads cfg.MODEL.WEIGHTS, and draws its predictions with
    detectron2's Visualizer in the Cityscapes colours of the training dataset's metadata. Another
    `predictor` called as DefaultPredictor is (an exported model's) takes the model's place."""

    def __init__(self, cfg, confidence_threshold: float = 0.5, predictor=None):
        self.cfg = cfg
        self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else cfg.DATASETS.TRAIN[0])
        if predictor is None:
            predictor = InstancePredictor(cfg, load_model(cfg, strict=True))
        self.predictor = predictor
        self.confidence_threshold = confidence_threshold

    def run_on_image(self, image: np.ndarray):
        """A BGR image (as OpenCV reads it, and as detectron2's predictor takes it) ->
        (predictions, RGB picture)."""
        predictions = self.predictor(image)
        rgb = np.ascontiguousarray(image[:, :, ::-1])
        return predictions, draw_instances(rgb, predictions["instances"], self.metadata,
                                           self.confidence_threshold)

    def _drawn_files(self, files: List[str], progress: bool):
        """(path, predictions, RGB picture) for each readable file; unreadable images are named in
        a warning and skipped."""
        for path in tqdm.tqdm(files, desc="demo", unit="image", disable=not progress):
            try:
                image = utils.read_image(path, format="BGR")
            except (OSError, ValueError, SyntaxError) as e:
                logger.warning(f"Skipped unreadable image {path}: {e}")
                continue
            yield (path, *self.run_on_image(image))

    def run_on_files(self, files: List[str], output: str) -> List[str]:
        """Draws each file into `output` (a folder; or a file when there is one input)."""
        single_file_out = len(files) == 1 and os.path.splitext(output)[1].lower() in IMAGE_EXTENSIONS
        written = []
        for path, predictions, picture in self._drawn_files(files, progress=True):
            out = output if single_file_out else os.path.join(output, os.path.basename(path))
            out = os.path.splitext(out)[0] + ".png" if not single_file_out else out
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            cv2.imwrite(out, picture[:, :, ::-1])
            logger.info(f"{path}: {len(predictions['instances'])} instances -> {out}")
            written.append(out)
        return written

    def _frames(self, capture) -> Iterator[np.ndarray]:
        while True:
            ok, frame = capture.read()  # BGR
            if not ok:
                return
            yield frame

    def run_on_video(self, video: str, output: str) -> str:
        """Writes `output` (a file, or a folder to hold <name>.mp4) with the predictions drawn on
        every frame; returns its path."""
        capture = cv2.VideoCapture(video)
        if not capture.isOpened():
            raise DemoInputError(f"--video-input '{video}' cannot be read as a video")
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        fps = capture.get(cv2.CAP_PROP_FPS) or 15.0
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if os.path.isdir(output) or not os.path.splitext(output)[1]:
            os.makedirs(output, exist_ok=True)
            output = os.path.join(output, os.path.splitext(os.path.basename(video))[0] + ".mp4")
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        writer = cv2.VideoWriter(output, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height), True)
        try:
            for frame in tqdm.tqdm(self._frames(capture), total=frames, desc="video", unit="frame"):
                _, picture = self.run_on_image(frame)
                writer.write(np.ascontiguousarray(picture[:, :, ::-1]))
        finally:
            writer.release()
            capture.release()
        return output

    def show_files(self, files: List[str]):
        """Shows each picture in a window; any key shows the next, Esc stops."""

        def pictures():
            for path, predictions, picture in self._drawn_files(files, progress=False):
                logger.info(f"{path}: {len(predictions['instances'])} instances")
                yield picture

        show_in_window(pictures())

    def show_video(self, video: str):
        """Shows the video with the predictions drawn on every frame; Esc stops."""
        capture = cv2.VideoCapture(video)
        if not capture.isOpened():
            raise DemoInputError(f"--video-input '{video}' cannot be read as a video")
        self._show_frames(capture)

    def _show_frames(self, capture):
        try:
            show_in_window((self.run_on_image(frame)[1] for frame in self._frames(capture)), wait_ms=1)
        finally:
            capture.release()

    def run_on_webcam(self, camera: int = 0):
        """Shows the webcam's frames with the predictions drawn, until Esc or the stream ends."""
        if not display_available():
            raise DemoInputError("--webcam shows its pictures in a window, and there is no display here "
                                 "(or OpenCV was built without windows)")
        capture = cv2.VideoCapture(camera)
        if not capture.isOpened():
            raise DemoInputError(f"--webcam: no camera {camera} can be opened on this machine")
        self._show_frames(capture)
