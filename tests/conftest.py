import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
TINY = os.path.join(CONFIGS, "quick_schedules", "cs_ft_cpu_tiny.yaml")
# The `trained` fixture's config; its run is evaluated and checkpointed at these iterations.
FIXTURE = os.path.join(CONFIGS, "quick_schedules", "cs_ft_cpu_fixture.yaml")
FIXTURE_MAX_ITER, FIXTURE_EVAL_PERIOD = 150, 75
# cs_ft.yaml's R50-FPN at CPU test size: tiny images, no COCO download, no loader workers.
CS_FT_ON_CPU = ("MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TRAIN", "(96,)",
                "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "192",
                "DATALOADER.NUM_WORKERS", "0", "SOLVER.CLIP_GRADIENTS.ENABLED", "True")


sys.path.insert(0, os.path.join(REPO, "tools"))
from cityscapesscripts_on_numpy2 import mend_cityscapesscripts_for_numpy2  # noqa: E402

# The official-metric tests use cityscapesscripts itself as the arbiter, on any numpy.
mend_cityscapesscripts_for_numpy2()


def detectron2_cityscapes_evaluator_works():
    """Upstream main's Cityscapes loader and evaluator import a Meta-internal module inside their
    functions since 4823082a (detectron2 #5436); v0.6's import cityscapesscripts."""
    import inspect

    import detectron2.data.datasets.cityscapes as loader
    from detectron2.evaluation import cityscapes_evaluation as evaluator

    return not any("deeplearning.projects" in inspect.getsource(m) for m in (loader, evaluator))


def run(args, datasets, timeout=600, expect_ok=True, env=None):
    """Run `python args...` in the repository with DETECTRON2_DATASETS=datasets."""
    env = dict(os.environ, DETECTRON2_DATASETS=datasets, OMP_NUM_THREADS="2", **(env or {}))
    proc = subprocess.run(
        [sys.executable] + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def train_net(*args, config=TINY, **kw):
    """tools/train_net.py --config-file config args..."""
    return run([os.path.join("tools", "train_net.py"), "--config-file", config] + list(args), **kw)


def training_starts(output_dir):
    """The iteration each training run in `output_dir` started from, in order: detectron2's
    TrainerBase logs "Starting training from iteration N" to log.txt, which every run appends to."""
    path = os.path.join(output_dir, "log.txt")
    text = open(path).read() if os.path.isfile(path) else ""
    return [int(n) for n in re.findall(r"Starting training from iteration (\d+)", text)]


def resume_point(output_dir):
    """The iteration --resume restarts from by what is on disk: one after the iteration stored in
    the checkpoint that last_checkpoint names (which must load), 0 without last_checkpoint."""
    import torch

    tag = os.path.join(output_dir, "last_checkpoint")
    if not os.path.isfile(tag):
        return 0
    checkpoint = os.path.join(output_dir, open(tag).read().strip())
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["iteration"] + 1


def stop_when(proc, point, still=None, timeout=300):
    """Poll `point()` every 5 ms while `proc` runs; when it returns something true, stop the
    process (SIGSTOP) and return that value with the process stopped, so that what it has written
    stays as it is until the test kills it. `still(value)`, asked once the process is stopped, says
    whether it stopped at that point (a temporary file seen a moment ago may have been renamed
    since); if not, the process goes on and so does the polling. Fails if the process ends first
    or the deadline passes."""
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, "the process ended before the point it was to be stopped at"
        assert time.time() < deadline, "timed out waiting for the point to stop the process at"
        value = point()
        if value:
            os.kill(proc.pid, signal.SIGSTOP)
            _wait_until_stopped(proc.pid)
            if still is None or still(value):
                return value
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.005)


def _wait_until_stopped(pid):
    """Returns once every thread of `pid` has stopped (a thread inside a system call, a rename
    say, stops only when the call is done)."""
    def states():
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/stat") as f:
                    yield f.read().rpartition(")")[2].split()[0]
            except FileNotFoundError:  # a thread that ended
                pass

    while not all(state in "TtZX" for state in states()):
        time.sleep(0.001)


@pytest.fixture(scope="session", autouse=True)
def private_dataset_cache(tmp_path_factory):
    """The parsed-dataset cache of this test session (and its subprocesses) lives in a temp dir."""
    os.environ["CITYSCAPES_FT_CACHE_DIR"] = str(tmp_path_factory.mktemp("dataset_cache"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic Cityscapes tree; returns the folder to use as DETECTRON2_DATASETS."""
    from cityscapes_ft.data.synthetic import make_synthetic_cityscapes

    base = tmp_path_factory.mktemp("d2datasets")
    make_synthetic_cityscapes(str(base / "cityscapes"), num_train=8, num_val=6, width=256,
                              height=128, seed=3, log=lambda *_: None)
    return str(base)


@pytest.fixture
def cityscapes_env(synthetic_root, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", synthetic_root)
    return synthetic_root


CITYSCAPES_MAP = ("person", "person", "car", "truck", "bus", "train", "motorcycle", "bicycle")
# class-specific tensors of detectron2's ROI heads: rows per class, rows after the classes
CLASS_ROWS = {"cls_score": (1, 1), "bbox_pred": (4, 0), "predictor": (1, 0)}


def class_rows(key):
    """(rows per class, rows after the classes) of a class-specific ROI-head tensor, else None."""
    if not key.startswith("roi_heads.") or key.split(".")[-1] not in ("weight", "bias"):
        return None
    return CLASS_ROWS.get(key.split(".")[-2])


def save_as_model_zoo_checkpoint(model, path):
    """`model` saved as detectron2's model zoo saves checkpoints (a pickle of {"model": {name: numpy
    array}, "__author__": ...}), with random class-specific rows so that every class's rows differ
    from every other's. Returns the saved state."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().numpy()
        if class_rows(key) is not None:
            value = rng.normal(0, 0.01, size=value.shape).astype(value.dtype)
        state[key] = value
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo (stand-in)"}, f)
    return state


def assert_coco_class_rows_transferred(coco, loaded):
    """Each Cityscapes class holds the rows of its COCO class (detectron2's COCO class list, rider
    from person), the background row is COCO's, every other tensor is the checkpoint's. `coco`:
    name -> numpy array (a model-zoo checkpoint), `loaded`: the model's state dict. Returns the
    number of tensors transferred by class."""
    import numpy as np
    from detectron2.data import MetadataCatalog

    coco_classes = MetadataCatalog.get("coco_2017_train").thing_classes
    sources = [coco_classes.index(c) for c in CITYSCAPES_MAP]
    transferred = 0
    for key, value in coco.items():
        got = loaded[key].cpu().numpy()
        rows = class_rows(key)
        if rows is None or value.shape[0] == rows[0]:  # not class-specific, or class-agnostic
            np.testing.assert_array_equal(got, value, err_msg=key)
            continue
        per_class, extra = rows
        expected = np.concatenate([value[s * per_class:(s + 1) * per_class] for s in sources]
                                  + ([value[-extra:]] if extra else []))
        np.testing.assert_array_equal(got, expected, err_msg=key)
        transferred += 1
    return transferred


def load_config(path, *opts):
    from cityscapes_ft.config import load_cityscapes_ft_cfg

    return load_cityscapes_ft_cfg(path, opts)


def evaluation_of(output_dir, iteration, dataset="cityscapes_ft_instance_val"):
    """The record (dataset, iteration, checkpoint, results) of a run's evaluation at `iteration`."""
    with open(os.path.join(output_dir, "eval_results", f"{dataset}_iter{iteration:07d}.json")) as f:
        return json.load(f)


def assert_far_from_0_and_100(*aps):
    """Two evaluations that agree say something only about numbers that could differ: any two
    models that find nothing agree on AP 0."""
    for ap in aps:
        assert 5 < ap < 95, aps


@pytest.fixture(scope="session")
def trained(synthetic_root, tmp_path_factory):
    """A model that detects: cs_ft_cpu_fixture.yaml through tools/train_net.py, 150 seeded
    iterations on the 8 synthetic training images, evaluated (official + COCO) and checkpointed
    at iterations 75 and 150, with 2 prediction pictures and the run report:
    (output dir, finished process).

    At 150 it reaches official AP 19.6 (AP50 53.6), COCO box AP 21.2 and mask AP 18.2 on the 6
    val images, with 1 to 4 detections per image above score 0.5; at 75 official AP is lower, so
    model_best.pth is replaced once. SEED makes these the same numbers every run. About 170 s of
    CPU time (2 threads)."""
    out = str(tmp_path_factory.mktemp("train"))
    proc = train_net("OUTPUT_DIR", out, "CITYSCAPES_FT.VIS_NUM_IMAGES", "2", config=FIXTURE,
                     datasets=synthetic_root)
    assert sorted(os.listdir(os.path.join(out, "eval_results"))) == [  # the iterations tests rely on
        f"cityscapes_ft_instance_val_iter{i:07d}.json" for i in (FIXTURE_EVAL_PERIOD, FIXTURE_MAX_ITER)]
    results = evaluation_of(out, FIXTURE_MAX_ITER)["results"]
    for task in ("cityscapes", "bbox", "segm"):  # official, COCO box and COCO mask AP
        assert 10 < results[task]["AP"] < 100, (task, results[task])
    return out, proc


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium, which `make test` installs (install/setup_test_tools.sh)."""
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("chromium is not installed: run install/setup_test_tools.sh (needs root and apt-get)")
    return path


def headless_chromium(chromium, url, profile, *args):
    """Headless chromium on `url` with `args` (--dump-dom, --screenshot=...), nothing fetched
    from the network, its profile in `profile`; returns the finished process."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    return subprocess.run([chromium] + flags + list(args) + [url], capture_output=True, text=True, timeout=120)


# Run after the page's load event: what the browser made of it, as JSON in <pre id="page-probe">.
_PAGE_PROBE = """<script>window.addEventListener("load", function () {
  var root = document.documentElement, probe = document.createElement("pre");
  probe.id = "page-probe";
  probe.textContent = JSON.stringify({
    scrollWidth: root.scrollWidth, clientWidth: root.clientWidth,
    headings: Array.prototype.map.call(document.querySelectorAll("h2, h3"), function (h) { return h.textContent; }),
    images: Array.prototype.map.call(document.images, function (i) {
      var box = i.getBoundingClientRect(), opaque = null;
      if (i.naturalWidth > 0) {  // the share of its lower half painted: a truncated file leaves it transparent
        var canvas = document.createElement("canvas"), h = Math.ceil(i.naturalHeight / 2);
        canvas.width = i.naturalWidth; canvas.height = i.naturalHeight;
        var context = canvas.getContext("2d");
        context.drawImage(i, 0, 0);
        var alpha = context.getImageData(0, i.naturalHeight - h, i.naturalWidth, h).data, n = 0;
        for (var k = 3; k < alpha.length; k += 4) { if (alpha[k] > 0) n++; }
        opaque = n / (alpha.length / 4);
      }
      return {alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth, lowerHalfPainted: opaque,
              width: box.width, right: box.right};
    }),
    tables: Array.prototype.map.call(document.querySelectorAll("table"), function (t) {
      return {cls: t.className, task: t.dataset.task || null, rows: Array.prototype.map.call(t.rows, function (r) {
        return Array.prototype.map.call(r.cells, function (c) { return c.textContent; }); })};
    })});
  document.body.appendChild(probe);
});</script>"""


def probe_page_in_chromium(chromium, html_file, profile, width=1280, height=900):
    """Opens a copy of `html_file` (beside it, so relative links hold) with a probe script added
    in headless chromium at a window of width x height, and returns what the probe saw after the
    load event: scrollWidth and clientWidth of the page, the h2/h3 headings, each image (alt,
    complete, naturalWidth, the share of its lower half's pixels that are painted, rendered width
    and right edge) and each table (class, data-task, the text of its cells by row)."""
    import html

    text = open(html_file, encoding="utf-8").read()
    assert "</body>" in text, html_file
    probed = os.path.join(os.path.dirname(html_file), "probed_" + os.path.basename(html_file))
    with open(probed, "w", encoding="utf-8") as f:
        f.write(text.replace("</body>", _PAGE_PROBE + "</body>", 1))
    proc = headless_chromium(chromium, "file://" + probed, profile, f"--window-size={width},{height}", "--dump-dom")
    found = re.search(r'<pre id="page-probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"chromium gave no probe result:\n{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))
