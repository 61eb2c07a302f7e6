"""Detectron2's own configs and datasets run through cityscapes-ft as they are: its model-zoo
Cityscapes config (datasets cityscapes_fine_instance_seg_*, evaluator_type "cityscapes_instance"),
our recipe keys on top of it, and a dataset registered with register_coco_instances ("coco")."""
import glob
import json
import os
import pickle
import textwrap

import pytest
import torch
from conftest import (
    CS_FT_ON_CPU,
    TINY,
    detectron2_cityscapes_evaluator_works,
    load_config,
    run,
    train_net,
    training_starts,
)
from detectron2 import model_zoo
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators

from cityscapes_ft.checks import detectron2_has_compiled_ops
from cityscapes_ft.errors import ConfigNotRunnable
from cityscapes_ft.evaluation import CityscapesInstanceSegEvaluator, build_evaluator

D2_CITYSCAPES = model_zoo.get_config_file("Cityscapes/mask_rcnn_R_50_FPN.yaml")
D2_VAL = "cityscapes_fine_instance_seg_val"
CLASS_MAP = '("person", "person", "car", "truck", "bus", "train", "motorcycle", "bicycle")'
# Detectron2's R50-FPN at CPU test size; the 20 best predictions per image kept, whatever their
# score, so that the evaluations have predictions to score.
ON_CPU = (*CS_FT_ON_CPU, "SOLVER.IMS_PER_BATCH", "2", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
          "TEST.DETECTIONS_PER_IMAGE", "20")
needs_detectron2_cityscapes = pytest.mark.skipif(
    not detectron2_cityscapes_evaluator_works(),
    reason="this detectron2's Cityscapes loader imports a Meta-internal module (detectron2 #5436)",
)


def eval_records(out):
    """OUTPUT_DIR/eval_results/*.json by file name."""
    records = {}
    for path in glob.glob(os.path.join(out, "eval_results", "*.json")):
        with open(path) as f:
            records[os.path.basename(path)] = json.load(f)
    return records


def log_of(proc):
    return proc.stdout + proc.stderr


# ---- build_evaluator, by evaluator_type ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_coco_json(tmp_path_factory):
    """A COCO json of one image and two categories (COCOEvaluator reads it when built)."""
    path = tmp_path_factory.mktemp("coco") / "tiny.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "area": 16,
                         "iscrowd": 0, "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}],
        "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "person"}],
    }))
    return str(path)


def register_metadata(name, **metadata):
    """A dataset name with this metadata (and no data), once per test session."""
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(**metadata)
    return name


def cfg_for(*opts):
    return load_config(TINY, "OUTPUT_DIR", "/nonexistent/unused", *opts)


@pytest.mark.parametrize("dataset", ["cityscapes_ft_instance_val", D2_VAL])
def test_cityscapes_types_get_our_evaluator_with_the_configured_tasks(dataset, tmp_path):
    cfg = cfg_for("CITYSCAPES_FT.EVAL_TASKS", '("cityscapes", "segm")')
    ev = build_evaluator(cfg, dataset, str(tmp_path))
    assert type(ev) is CityscapesInstanceSegEvaluator
    assert ev._tasks == ("cityscapes", "segm")
    # official label ids: from the map (ours) or from the class names (detectron2's has no map)
    assert ev._label_ids == [24, 25, 26, 27, 28, 31, 32, 33]


def test_coco_type_gets_detectron2s_coco_evaluator_with_the_models_tasks(tiny_coco_json, tmp_path):
    name = "test_d2cfg_coco_tiny"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, tiny_coco_json, str(tmp_path))
    ev = build_evaluator(cfg_for(), name, str(tmp_path))
    assert type(ev) is COCOEvaluator and ev._tasks == ("bbox", "segm")
    # detectron2's fast COCOeval where its compiled extension is built, pycocotools' otherwise
    assert ev._use_fast_impl == detectron2_has_compiled_ops()
    boxes_only = build_evaluator(cfg_for("MODEL.MASK_ON", "False"), name, str(tmp_path))
    assert boxes_only._tasks == ("bbox",)


def test_several_types_compose_without_computing_a_result_twice(tiny_coco_json, tmp_path):
    name = register_metadata("test_d2cfg_two_types", evaluator_type=["cityscapes_instance", "coco"],
                             thing_classes=["car", "person"], json_file=tiny_coco_json)
    ev = build_evaluator(cfg_for(), name, str(tmp_path))
    assert isinstance(ev, DatasetEvaluators)
    ours, coco = ev._evaluators
    assert type(ours) is CityscapesInstanceSegEvaluator and ours._tasks == ("cityscapes",)
    assert type(coco) is COCOEvaluator and coco._tasks == ("bbox", "segm")
    assert coco._output_dir == str(tmp_path / "coco")  # not over our coco_instances_results.json
    assert ours._label_ids == [26, 24]  # by name, in the dataset's class order


@pytest.mark.parametrize("evaluator_type", [None, "sem_seg", ["coco", "lvis"]])
def test_unknown_or_missing_type_is_one_clear_error(evaluator_type, tmp_path):
    name = f"test_d2cfg_type_{evaluator_type}".replace(" ", "")
    metadata = {"thing_classes": ["car"]}
    if evaluator_type is not None:
        metadata["evaluator_type"] = evaluator_type
    register_metadata(name, **metadata)
    with pytest.raises(ConfigNotRunnable) as e:
        build_evaluator(cfg_for(), name, str(tmp_path))
    message = str(e.value)
    assert name in message
    for supported in ("'cityscapes_ft_instance'", "'cityscapes_instance'", "'coco'"):
        assert supported in message
    assert ("no evaluator_type" if evaluator_type is None else repr(evaluator_type)) in message


def test_ground_truth_of_detectron2s_dicts_is_found_from_the_image_path(cityscapes_env, tmp_path):
    """Detectron2's dataset dicts have no instance_ids_file; its metadata's gt_dir (or, without
    one, the Cityscapes layout) names each image's *_gtFine_instanceIds.png."""
    from cityscapes_ft.data.cityscapes import gtfine_file

    ours = DatasetCatalog.get("cityscapes_ft_instance_val")
    image = ours[0]["file_name"]
    assert gtfine_file(image, "instanceIds.png") == ours[0]["instance_ids_file"]
    gt_dir = os.path.join(cityscapes_env, "cityscapes", "gtFine", "val") + "/"  # as detectron2's
    found = gtfine_file(image, "instanceIds.png", gt_dir)
    assert os.path.samefile(found, ours[0]["instance_ids_file"])


@needs_detectron2_cityscapes
def test_our_evaluator_scores_detectron2s_cityscapes_dicts_as_ours(cityscapes_env, tmp_path):
    """Detectron2's own loader (no instance_ids_file, no label-id map, gt_dir in the metadata),
    registered here on the synthetic data: the ground truth as predictions scores official AP
    100, the same as on our dataset."""
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances
    from test_evaluator import perfect_predictions

    name = "test_d2cfg_detectron2_loader_val"
    if name not in DatasetCatalog.list():
        image_dir = os.path.join(cityscapes_env, "cityscapes", "leftImg8bit", "val") + "/"
        gt_dir = os.path.join(cityscapes_env, "cityscapes", "gtFine", "val") + "/"
        DatasetCatalog.register(name, lambda: load_cityscapes_instances(image_dir, gt_dir))
        builtin = MetadataCatalog.get(D2_VAL)
        MetadataCatalog.get(name).set(
            image_dir=image_dir, gt_dir=gt_dir, evaluator_type=builtin.evaluator_type,
            thing_classes=builtin.thing_classes,
        )
    cfg = cfg_for("CITYSCAPES_FT.EVAL_TASKS", '("cityscapes",)')
    # the ground truth from each image's instanceIds.png, which our dicts name
    ground_truth = {d["file_name"]: d for d in DatasetCatalog.get("cityscapes_ft_instance_val")}
    results = {}
    for dataset in (name, "cityscapes_ft_instance_val"):
        ev = build_evaluator(cfg, dataset, str(tmp_path / dataset))
        ev.reset()
        for d in DatasetCatalog.get(dataset):
            ev.process([{"file_name": d["file_name"], "image_id": d["image_id"]}],
                       [perfect_predictions(ground_truth[d["file_name"]])])
        results[dataset] = ev.evaluate()["cityscapes"]
    assert results[name]["AP"] == pytest.approx(100)
    assert results[name] == results["cityscapes_ft_instance_val"]


# ---- end to end through tools/train_net.py --------------------------------------------------

@pytest.mark.slow
@needs_detectron2_cityscapes
def test_detectron2_cityscapes_config_trains_evaluates_and_resumes(synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    # only model_final.pth is written (each R50-FPN checkpoint with its momentum is about 330 MB)
    common = [*ON_CPU, "OUTPUT_DIR", out, "SOLVER.CHECKPOINT_PERIOD", "100",
              "CITYSCAPES_FT.BEST_CHECKPOINT_METRIC", '""']
    train_net(*common, "SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "2", config=D2_CITYSCAPES,
              datasets=synthetic_root)
    records = eval_records(out)
    # evaluated during training (iteration 2) and at its end (4), each with every task
    assert set(records) == {f"{D2_VAL}_iter{i:07d}.json" for i in (2, 4)}, records.keys()
    for record in records.values():
        assert record["dataset"] == D2_VAL
        assert set(record["results"]) == {"cityscapes", "bbox", "segm"}
        assert 0 <= record["results"]["cityscapes"]["AP"] <= 100
    official = os.path.join(out, "inference", D2_VAL, "cityscapes_official")
    assert os.path.isfile(os.path.join(official, "resultInstanceLevelSemanticLabeling.json"))

    # the final weights, evaluated on their own, score what the evaluation at the end did
    evaluated = str(tmp_path / "eval")
    train_net("--eval-only", *ON_CPU, "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
              "OUTPUT_DIR", evaluated, config=D2_CITYSCAPES, datasets=synthetic_root)
    again = eval_records(evaluated)[f"{D2_VAL}_iter0000004.json"]["results"]
    at_end = records[f"{D2_VAL}_iter0000004.json"]["results"]
    assert again["cityscapes"]["AP"] == at_end["cityscapes"]["AP"]
    assert again == at_end

    train_net("--resume", *common, "SOLVER.MAX_ITER", "6", "DATASETS.TEST", "()",
              "TEST.EVAL_PERIOD", "0", config=D2_CITYSCAPES, datasets=synthetic_root)
    assert training_starts(out) == [0, 4]
    final = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert final["iteration"] == 5


def coco_stand_in(config, path, *opts):
    """`config`'s model with COCO's 80 classes, saved as the model zoo saves it."""
    from detectron2.modeling import build_model

    cfg = load_config(config, *opts, "MODEL.ROI_HEADS.NUM_CLASSES", "80")
    state = {k: v.detach().numpy() for k, v in build_model(cfg).state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "stand-in", "matching_heuristics": True}, f)


@pytest.mark.slow
@needs_detectron2_cityscapes
def test_our_recipe_keys_on_top_of_detectron2s_config(synthetic_root, tmp_path):
    stand_in = str(tmp_path / "model_final_coco.pkl")
    coco_stand_in(D2_CITYSCAPES, stand_in, *ON_CPU)
    out = str(tmp_path / "run")
    # ON_CPU clips gradients by value (detectron2's default CLIP_TYPE), here with a frozen backbone
    proc = train_net(*ON_CPU, "MODEL.WEIGHTS", stand_in,
                     "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()",
                     "CITYSCAPES_FT.BACKBONE_FREEZE.ITERS", "2",
                     "MODEL.HEAD_TRANSFER.CLASS_MAP", CLASS_MAP,
                     config=D2_CITYSCAPES, datasets=synthetic_root)
    log = log_of(proc)
    assert "transferred by class map:  6 tensors" in log
    assert "rider <- person" in log and "car <- car" in log and "bicycle <- bicycle" in log
    assert "Staged freezing: backbone frozen" in log
    assert "Staged freezing: backbone trains from iteration 2" in log


DRIVER = textwrap.dedent('''
    """tools/train_net.py with COCO-format datasets registered in every process it starts."""
    import os

    from detectron2.data.datasets import register_coco_instances

    from cityscapes_ft.engine import argument_parser, launch, train_or_evaluate
    from cityscapes_ft.errors import user_errors_as_messages


    def main(args):
        for split in ("train", "val"):
            json_file = os.environ[f"COCO_JSON_{split.upper()}"]
            register_coco_instances(f"synthetic_coco_{split}", {}, json_file, "")
        return train_or_evaluate(args)


    if __name__ == "__main__":
        args = argument_parser().parse_args()
        with user_errors_as_messages():
            launch(main, args.num_gpus, args=(args,))
''')


@pytest.mark.slow
def test_register_coco_instances_dataset_trains_and_gets_coco_ap(cityscapes_env, tmp_path):
    env = {}
    for split in ("train", "val"):
        path = str(tmp_path / f"synthetic_{split}.json")
        convert_to_coco_json(f"cityscapes_ft_instance_{split}", path)
        env[f"COCO_JSON_{split.upper()}"] = path
    driver = tmp_path / "train_coco.py"
    driver.write_text(DRIVER)
    data = ("DATASETS.TRAIN", '("synthetic_coco_train",)', "DATASETS.TEST",
            '("synthetic_coco_val",)', "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    out = str(tmp_path / "run")
    run([str(driver), "--config-file", TINY, *data, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "2"],
        cityscapes_env, env=env)
    evaluated = str(tmp_path / "eval")
    proc = run([str(driver), "--config-file", TINY, "--eval-only", *data, "OUTPUT_DIR", evaluated,
                "MODEL.WEIGHTS", os.path.join(out, "model_final.pth")], cityscapes_env, env=env)
    (record,) = eval_records(evaluated).values()
    assert record["dataset"] == "synthetic_coco_val" and set(record["results"]) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        res = record["results"][task]
        assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-car"} <= set(res)
        assert 0 <= res["AP"] <= 100 and 0 <= res["AP50"] <= 100
        assert all(v is None or 0 <= v <= 100 for v in res.values())  # None: NaN, no ground truth
    # no official evaluation attempted: no ground-truth images asked for, none of its files
    assert "Official Cityscapes" not in log_of(proc)
    folder = os.path.join(evaluated, "inference", "synthetic_coco_val")
    assert os.path.isfile(os.path.join(folder, "coco_instances_results.json"))
    assert not os.path.exists(os.path.join(folder, "cityscapes_official"))
