"""LazyConfig (.py) runs: configs/cs_ft_*_LSJ.py and the ViTDet configs, built on detectron2's own
COCO LazyConfigs, through tools/lazyconfig_train_net.py's path (cityscapes_ft.lazy). References:
detectron2's model-zoo configs and checkpoint table, its LazyConfig loader, and an uninterrupted
run for resume exactness."""
import glob
import os
import pytest
import torch
from conftest import (
    CITYSCAPES_MAP,
    CONFIGS,
    assert_coco_class_rows_transferred,
    class_rows,
    save_as_model_zoo_checkpoint,
    training_starts,
)

LSJ_CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, "cs_ft_*_LSJ.py")))
VITDET_CONFIGS = ["cs_ft_mask_rcnn_vitdet_b.py", "cs_ft_cascade_mask_rcnn_vitdet_b.py"]
# CPU test sizes, typed as a user would: tiny frames, fewer sampled ROIs and proposals, fp32.
ON_CPU = ["train.device=cpu", "train.amp.enabled=False", "dataloader.train.num_workers=0",
          "dataloader.train.total_batch_size=1", "input_sizes.crop_size=128", "input_sizes.short_side=128",
          "input_sizes.max_size=256", "model.roi_heads.batch_size_per_image=64",
          "model.proposal_generator.post_nms_topk=[200,100]"]


def detectron2_has_vit():
    import detectron2.modeling

    return hasattr(detectron2.modeling, "ViT")


def has_vitdet():
    """detectron2's ViTDet and the timm package its ViT imports."""
    import importlib.util

    return detectron2_has_vit() and importlib.util.find_spec("timm") is not None


def zoo_name(config):
    """The detectron2 model-zoo LazyConfig a configs/cs_ft_*_LSJ.py fine-tunes."""
    return "new_baselines/mask_rcnn_" + config[len("cs_ft_"):-len(".py")]


def lazy_cfg(config, *opts):
    from cityscapes_ft.lazy import load_lazy_cityscapes_ft_cfg

    return load_lazy_cityscapes_ft_cfg(os.path.join(CONFIGS, config), list(opts))


def test_every_lsj_baseline_has_a_config():
    assert {f"cs_ft_{a}_{e}_LSJ.py" for a in ("R_50_FPN", "R_101_FPN", "regnetx_4gf_dds_FPN", "regnety_4gf_dds_FPN")
            for e in ("100ep", "400ep")} <= set(LSJ_CONFIGS)


@pytest.mark.parametrize("config", LSJ_CONFIGS)
def test_lsj_config_is_detectron2s_coco_model_with_8_classes_and_its_checkpoint(config):
    from detectron2 import model_zoo
    from detectron2.config import instantiate

    from cityscapes_ft.lazy import lazy_config_of

    cfg, typed = lazy_cfg(config)
    assert typed == {}
    coco = model_zoo.get_config(zoo_name(config) + ".py")
    assert cfg.MODEL.WEIGHTS == model_zoo.get_checkpoint_url(zoo_name(config) + ".py")  # detectron2's table
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 8 and cfg.MODEL.MASK_ON
    assert cfg.MODEL.HEAD_TRANSFER.CLASS_MAP == CITYSCAPES_MAP
    assert cfg.DATASETS.TRAIN == ("cityscapes_ft_instance_train",) and cfg.DATASETS.TEST == ("cityscapes_ft_instance_val",)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (1024, 2048)
    assert cfg.CITYSCAPES_FT.SCHEDULE.UNIT == "epochs" and cfg.CITYSCAPES_FT.SCHEDULE.MAX_EPOCHS > 0
    # the checkpoint's optimizer (SGD, weight decay 4e-5, none on norms) at the LR scaled to 8 images
    assert cfg.SOLVER.WEIGHT_DECAY == coco.optimizer.weight_decay
    assert cfg.SOLVER.BASE_LR == pytest.approx(coco.optimizer.lr * 8 / coco.dataloader.train.total_batch_size)
    assert cfg.SOLVER.IMS_PER_BATCH == 8 and cfg.SOLVER.AMP.ENABLED == coco.train.amp.enabled
    torch.manual_seed(0)
    ours = instantiate(lazy_config_of(cfg).model).state_dict()
    theirs = instantiate(coco.model).state_dict()
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        rows = class_rows(key)
        if rows is None or value.shape[0] == rows[0]:
            assert ours[key].shape == value.shape, key
        else:
            per_class, extra = rows
            assert value.shape[0] == 80 * per_class + extra and ours[key].shape[0] == 8 * per_class + extra, key


def test_overrides_are_the_values_used_and_unknown_keys_are_refused():
    from cityscapes_ft.errors import ConfigNotRunnable
    from cityscapes_ft.schedule import resolve_training_schedule

    config = "cs_ft_R_50_FPN_100ep_LSJ.py"
    cfg, typed = lazy_cfg(config, "train.max_iter=7", "optimizer.lr=0.02", "dataloader.train.total_batch_size=4",
                          "lr_multiplier.warmup_factor=0.5", "CITYSCAPES_FT.EARLY_STOP.PATIENCE=2",
                          "input_sizes.crop_size=320")
    resolved, _ = resolve_training_schedule(cfg, 1, 100, typed)
    assert resolved.SOLVER.MAX_ITER == 7 and resolved.SOLVER.BASE_LR == 0.02  # typed: not rescaled
    assert resolved.SOLVER.IMS_PER_BATCH == 4 and resolved.SOLVER.WARMUP_FACTOR == 0.5
    assert resolved.CITYSCAPES_FT.EARLY_STOP.PATIENCE == 2
    assert "input_sizes.crop_size=320" in cfg.CITYSCAPES_FT.LAZY_CONFIG.OVERRIDES
    # what the file states is rescaled by the one rule: 8 images -> 4 halves the LR, doubles warmup
    untyped, _ = resolve_training_schedule(lazy_cfg(config, "dataloader.train.total_batch_size=4")[0], 1, 100,
                                           {"SOLVER.IMS_PER_BATCH": "typed"})
    as_stated = lazy_cfg(config)[0].SOLVER
    assert untyped.SOLVER.BASE_LR == pytest.approx(as_stated.BASE_LR / 2)
    assert untyped.SOLVER.WARMUP_ITERS == 2 * as_stated.WARMUP_ITERS
    for bad, words in [("input_size.crop_size=3", "has no key input_size.crop_size"),
                       ("train.ddp.fp16_compression=False", "not used"),
                       ("dataloader.train.sampler=x", "has no key"),
                       ("CITYSCAPES_FT.EARLY_STOP.PATIENT=2", "CITYSCAPES_FT.EARLY_STOP.PATIENCE"),
                       ("train.max_iter", "key=value")]:
        with pytest.raises(ConfigNotRunnable, match=words) as e:
            lazy_cfg(config, bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigNotRunnable, match="tools/train_net.py"):
        lazy_cfg("cs_ft.yaml")


def test_lazy_optimizer_keeps_the_configs_rules_per_model_part():
    """ViTDet-style layer-wise decay (an lr_factor_func) and the LR multipliers both shape the groups."""
    from detectron2.modeling import build_model

    from cityscapes_ft.engine.optimizer import build_lazy_optimizer, model_part

    cfg, _ = lazy_cfg("cs_ft_R_50_FPN_100ep_LSJ.py", *ON_CPU, "CITYSCAPES_FT.LR_MULTIPLIER.BACKBONE=0.5",
                      "optimizer.lr=0.04")
    model = build_model(cfg)
    optimizer = build_lazy_optimizer(cfg, model)
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.9
    names = {id(p): n for n, p in model.named_parameters()}
    seen = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            name, seen = names[id(p)], seen + 1
            assert group["part"] == model_part(model, name)
            expected = 0.04 * (0.5 if group["part"] == "backbone" else 1.0)
            assert group["lr"] == pytest.approx(expected), name
            norm = ".norm." in name or name.endswith(("norm.weight", "norm.bias"))
            assert group["weight_decay"] == (0.0 if norm else cfg.SOLVER.WEIGHT_DECAY), name
    assert seen == sum(p.requires_grad for p in model.parameters())


def coco_stand_in(coco_model, path, *overrides):
    """detectron2's COCO model of a LazyConfig (80 classes) saved as the model zoo saves it, with
    random class rows so that every class's rows differ."""
    from detectron2.config import LazyConfig, instantiate

    LazyConfig.apply_overrides(coco_model, list(overrides))
    torch.manual_seed(0)
    return save_as_model_zoo_checkpoint(instantiate(coco_model), path)


def lazyconfig_train_net(config, *argv):
    from cityscapes_ft.engine import argument_parser, train_or_evaluate
    from cityscapes_ft.lazy import load_lazy_cityscapes_ft_cfg

    args = argument_parser().parse_args(["--config-file", os.path.join(CONFIGS, config), *argv])
    return train_or_evaluate(args, load_config=load_lazy_cityscapes_ft_cfg)


def fine_tune_transfer_resume_evaluate(config, coco_model, stages, tmp_path):
    from detectron2.modeling import build_model

    from cityscapes_ft.checkpoint import build_checkpointer
    from cityscapes_ft.engine import argument_parser, train_or_evaluate

    stand_in = str(tmp_path / "model_final_coco.pkl")
    model_overrides = [o for o in ON_CPU if o.startswith("model.")]
    coco = coco_stand_in(coco_model, stand_in, *[o[len("model."):] for o in model_overrides])
    cfg, _ = lazy_cfg(config, *ON_CPU, f"train.init_checkpoint={stand_in}")
    model = build_model(cfg)
    checkpointer = build_checkpointer(cfg, model)
    checkpointer.load(stand_in)
    assert checkpointer.last_load_report.fresh == [] and checkpointer.last_load_report.unused == []
    # classifier and mask rows per stage, box rows too unless class-agnostic (cascade)
    assert assert_coco_class_rows_transferred(coco, model.state_dict()) == stages * 2 + (2 if stages == 1 else 0) + 2

    common = [*ON_CPU, f"train.init_checkpoint={stand_in}", "train.checkpointer.period=1", "train.eval_period=0",
              "dataloader.test.dataset.names=[]", "train.seed=5",
              "lr_multiplier.warmup_length=0",  # (a warmup longer than the run stretches with max_iter)
              "CITYSCAPES_FT.BACKBONE_FREEZE.ITERS=1"]  # staged freezing: the trunk trains from iteration 1
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    lazyconfig_train_net(config, *common, "train.max_iter=2", f"train.output_dir={straight}")
    lazyconfig_train_net(config, *common, "train.max_iter=1", f"train.output_dir={split}")
    lazyconfig_train_net(config, "--resume", *common, "train.max_iter=2", f"train.output_dir={split}")
    assert training_starts(split) == [0, 1]  # (in-process runs: the first run's log also gets the later ones)
    a = torch.load(os.path.join(straight, "model_final.pth"), map_location="cpu", weights_only=False)["model"]
    b = torch.load(os.path.join(split, "model_final.pth"), map_location="cpu", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # exact resume
    cls_key = next(k for k in coco if k.endswith("cls_score.weight"))
    assert not torch.equal(a[cls_key], model.state_dict()[cls_key])  # it trained
    # after iteration 0 the trunk's weights were still the checkpoint's; after iteration 1 not
    first = torch.load(os.path.join(split, "model_0000000.pth"), map_location="cpu", weights_only=False)["model"]
    trunk = [n for n, _ in model.named_parameters() if n.startswith(("backbone.bottom_up.", "backbone.net."))]
    assert trunk and all(torch.equal(first[n], model.state_dict()[n]) for n in trunk)
    assert not all(torch.equal(a[n], model.state_dict()[n]) for n in trunk)
    assert not torch.equal(first[cls_key], model.state_dict()[cls_key])

    results = lazyconfig_train_net(config, "--eval-only", *ON_CPU, f"train.output_dir={tmp_path / 'eval'}",
                                   f"train.init_checkpoint={os.path.join(straight, 'model_final.pth')}")
    assert set(results) == {"cityscapes", "bbox", "segm"}
    assert {"AP", "AP50", "AP-rider"} <= set(results["cityscapes"])
    # the run's config.yaml is the whole description: tools/train_net.py evaluates it alike
    again = train_or_evaluate(argument_parser().parse_args(
        ["--config-file", os.path.join(straight, "config.yaml"), "--eval-only", "MODEL.WEIGHTS",
         os.path.join(straight, "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval_yaml"),
         "DATASETS.TEST", "('cityscapes_ft_instance_val',)"]))
    assert again["segm"]["AP"] == results["segm"]["AP"] and again["cityscapes"] == results["cityscapes"]


@pytest.mark.slow
# one per architecture: a 400ep config is its 100ep twin's model and code with another checkpoint URL
# (test_lsj_config_is_detectron2s_coco_model_with_8_classes_and_its_checkpoint builds every one)
@pytest.mark.parametrize("config", [c for c in LSJ_CONFIGS if "_100ep_" in c])
def test_lsj_config_transfers_its_checkpoints_class_rows_and_takes_a_training_step(config, cityscapes_env, tmp_path):
    """Each config: a stand-in of its model-zoo checkpoint (detectron2's COCO model) loads with
    every class row mapped, and one image through the config's own training mapper (large-scale
    jitter) gives finite losses whose gradients reach the transferred rows."""
    from detectron2 import model_zoo
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from cityscapes_ft.checkpoint import build_checkpointer
    from cityscapes_ft.data import build_mapper

    stand_in = str(tmp_path / "coco.pkl")
    model_overrides = [o[len("model."):] for o in ON_CPU if o.startswith("model.")]
    coco = coco_stand_in(model_zoo.get_config(zoo_name(config) + ".py").model, stand_in, *model_overrides)
    cfg, _ = lazy_cfg(config, *ON_CPU, f"train.init_checkpoint={stand_in}")
    model = build_model(cfg)
    checkpointer = build_checkpointer(cfg, model)
    checkpointer.load(stand_in)
    assert checkpointer.last_load_report.fresh == [] and checkpointer.last_load_report.unused == []
    assert assert_coco_class_rows_transferred(coco, model.state_dict()) == 6
    sample = build_mapper(cfg, is_train=True)(DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[0])
    assert max(sample["image"].shape[1:]) <= 128  # input_sizes.crop_size, typed
    model.train()
    with EventStorage():
        losses = model([sample])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_lsj_fine_tune_transfers_trains_resumes_exactly_and_evaluates(cityscapes_env, tmp_path):
    from detectron2 import model_zoo

    coco = model_zoo.get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py").model
    fine_tune_transfer_resume_evaluate("cs_ft_R_50_FPN_100ep_LSJ.py", coco, 1, tmp_path)


@pytest.mark.parametrize("config", VITDET_CONFIGS)
def test_vitdet_config_on_a_detectron2_without_vitdet_is_refused_in_one_line(config):
    from cityscapes_ft.errors import ConfigNotRunnable

    if has_vitdet():
        cfg, _ = lazy_cfg(config)
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 8 and cfg.SOLVER.IMS_PER_BATCH == 8
        return
    with pytest.raises(ConfigNotRunnable) as e:
        lazy_cfg(config)
    message = str(e.value)
    assert "\n" not in message and config in message
    if detectron2_has_vit():
        assert "pip install timm" in message
    else:
        assert "detectron2.modeling.ViT" in message and "main" in message and "v0.6" in message


@pytest.mark.slow
@pytest.mark.skipif(not has_vitdet(), reason="needs detectron2 with ViTDet (main, not v0.6) and timm")
@pytest.mark.parametrize("config,stages", [(VITDET_CONFIGS[0], 1), (VITDET_CONFIGS[1], 3)])
def test_vitdet_fine_tune_transfers_trains_resumes_exactly_and_evaluates(config, stages, cityscapes_env, tmp_path):
    from cityscapes_ft.lazy import lazy_config_of

    cfg, _ = lazy_cfg(config)
    coco = lazy_config_of(cfg).model
    coco.roi_heads.num_classes = 80
    fine_tune_transfer_resume_evaluate(config, coco, stages, tmp_path)


def test_detectron2s_own_lazyconfig_translates_to_its_yaml_twin():
    """detectron2 ships the same R50-FPN 1x recipe as a LazyConfig and as a YAML config: the
    translation gives the YAML's keys."""
    from detectron2 import model_zoo

    from conftest import load_config

    name = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x"
    ours, _ = lazy_cfg(model_zoo.get_config_file(name + ".py"))
    theirs = load_config(model_zoo.get_config_file(name + ".yaml"))
    for key in ("SOLVER.MAX_ITER", "SOLVER.STEPS", "SOLVER.GAMMA", "SOLVER.BASE_LR", "SOLVER.IMS_PER_BATCH",
                "SOLVER.WARMUP_ITERS", "SOLVER.WARMUP_FACTOR", "SOLVER.WEIGHT_DECAY", "SOLVER.MOMENTUM",
                "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "INPUT.FORMAT", "DATASETS.TRAIN", "DATASETS.TEST",
                "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.MASK_ON"):
        a, b = ours, theirs
        for part in key.split("."):
            a, b = a[part], b[part]
        assert a == b, (key, a, b)


@pytest.mark.slow
def test_detectron2s_own_lazyconfig_trains_on_cityscapes_in_two_processes(synthetic_root, tmp_path):
    """A user's path: detectron2's unmodified LazyConfig file, our datasets by name, --num-gpus 2."""
    import json

    from detectron2 import model_zoo

    from conftest import run

    out = tmp_path / "run"
    run(["tools/lazyconfig_train_net.py", "--config-file",
         model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"),
         "--num-gpus", "2", "--dist-url", "auto",
         "dataloader.train.dataset.names=cityscapes_ft_instance_train",
         "dataloader.test.dataset.names=cityscapes_ft_instance_val", "model.roi_heads.num_classes=8",
         "train.device=cpu", "train.init_checkpoint=", "dataloader.train.total_batch_size=2",
         "dataloader.train.num_workers=0", "train.max_iter=2", "train.eval_period=2",
         "dataloader.train.mapper.augmentations.0.short_edge_length=[96]",
         "dataloader.train.mapper.augmentations.0.max_size=192",
         "dataloader.test.mapper.augmentations.0.short_edge_length=96",
         "dataloader.test.mapper.augmentations.0.max_size=192",
         "model.roi_heads.batch_size_per_image=64", f"train.output_dir={out}",
         # from scratch: GroupNorm (detectron2's FrozenBN diverges at once, as our start-up warning says)
         "model.backbone.bottom_up.stem.norm=GN", "model.backbone.bottom_up.stages.norm=GN"], synthetic_root)
    log = (out / "log.txt").read_text()
    assert "World size: 2" in log and "Starting training from iteration 0" in log
    record = json.loads((out / "eval_results" / "cityscapes_ft_instance_val_iter0000002.json").read_text())
    assert {"cityscapes", "bbox", "segm"} <= set(record["results"])  # our evaluator, by evaluator_type
    config = (out / "config.yaml").read_text()
    assert "mask_rcnn_R_50_FPN_1x.py" in config and "MAX_ITER: 2" in config and "IMS_PER_BATCH: 2" in config
    assert "NORM: GN" in config and "MODEL.RESNETS.NORM is FrozenBN" not in log
