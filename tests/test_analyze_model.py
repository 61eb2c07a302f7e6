"""tools/analyze_model.py: parameter, FLOP and activation counts of our configs' models, checked
against what torch itself reports and against the arithmetic of a known layer."""
import glob
import json
import os

import pytest
import torch
from conftest import CONFIGS, TINY, load_config, run

from cityscapes_ft.engine.analysis import analysis_inputs, analyze_model, load_model_for_analysis

# cs_ft.yaml in the fast tier, the model zoo's others (a few seconds each to build) in the full suite
MODEL_CONFIGS = [pytest.param(p, marks=() if p.endswith("cs_ft.yaml") else pytest.mark.slow)
                 for p in sorted(glob.glob(os.path.join(CONFIGS, "cs_ft*.yaml")))]


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: os.path.basename(p)[:-5])
def test_parameter_counts_of_every_config_add_up(path):
    """Total = what torch counts; the three parts of the model cover it; trainable = the total less
    the parameters the config's backbone freezing leaves without gradients."""
    cfg = load_config(path, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "")
    counts = analyze_model(cfg, ["parameter"])["parameters"]
    torch.manual_seed(0)
    model = load_model_for_analysis(cfg, need_weights=False)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    parts = counts["by_part"]
    assert parts["backbone"] + parts["proposal_generator"] + parts["roi_heads"] == counts["total"]
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert counts["trainable"] == counts["total"] - frozen
    assert (frozen > 0) == (cfg.MODEL.BACKBONE.FREEZE_AT > 0)


def test_box_head_flops_are_its_matrix_products(cityscapes_env):
    """The box head's count is exactly its two fully connected layers' multiply-adds for the
    proposals it ran on (counted by a hook here), per image."""
    cfg = load_config(TINY)
    model = load_model_for_analysis(cfg, need_weights=False)
    proposals = []
    model.roi_heads.box_head.register_forward_hook(lambda m, inputs, out: proposals.append(int(inputs[0].shape[0])))
    inputs, described = analysis_inputs(cfg, 2)
    assert described == "2 images of cityscapes_ft_instance_val"
    from cityscapes_ft.engine.analysis import count_flops

    flops, table = count_flops(model, inputs)
    fc1, fc2 = model.roi_heads.box_head.fc1, model.roi_heads.box_head.fc2
    per_proposal = fc1.in_features * fc1.out_features + fc2.in_features * fc2.out_features
    # each input is traced once by the FLOP counter: the hook saw every proposal it counted
    expected = per_proposal * sum(proposals) / len(inputs) / 1e9
    assert flops["by_part_gflops"]["roi_heads.box_head"] == pytest.approx(expected, rel=1e-3, abs=1e-3)
    assert flops["gflops_per_image"] >= sum(v for k, v in flops["by_part_gflops"].items() if "." not in k) - 0.01
    assert "roi_heads.box_head" in table


def test_without_the_dataset_counts_run_on_random_cityscapes_frames(tmp_path, monkeypatch, caplog):
    """No dataset: random 2048x1024 frames, resized as the test loader resizes, and a warning that
    says so."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    cfg = load_config(TINY)
    inputs, described = analysis_inputs(cfg, 2)
    assert len(inputs) == 2 and "random 2048x1024" in described
    assert [tuple(x["image"].shape) for x in inputs] == [(3, 128, 256)] * 2
    assert (inputs[0]["height"], inputs[0]["width"]) == (1024, 2048)
    assert not torch.equal(inputs[0]["image"], inputs[1]["image"])


@pytest.mark.slow
def test_cli_on_cs_ft_yaml_counts_everything(synthetic_root, tmp_path):
    """`tools/analyze_model.py --config-file configs/cs_ft.yaml --tasks parameter flop activation`
    with MODEL.WEIGHTS a local stand-in of cs_ft.yaml's model (never the detectron2:// COCO
    checkpoint, so neither a network nor a download cache decides what runs): the stand-in is
    loaded, and the counts are those of that model."""
    from detectron2.modeling import build_model

    stand_in = str(tmp_path / "cs_ft_stand_in.pth")
    cfg = load_config(os.path.join(CONFIGS, "cs_ft.yaml"), "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "")
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.save({"model": model.state_dict()}, stand_in)
    out = tmp_path / "analysis.json"
    # the overrides right after the task names, as with detectron2's tools
    proc = run(["tools/analyze_model.py", "--config-file", os.path.join(CONFIGS, "cs_ft.yaml"), "--output", str(out),
                "--tasks", "parameter", "flop", "activation", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", stand_in,
                "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "512"], synthetic_root)
    log = proc.stderr + proc.stdout
    assert stand_in in log and "counting with the model as initialised" not in log
    report = json.load(open(out))
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert report["parameters"]["total"] == summary["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert report["inputs"] == "1 images of cityscapes_ft_instance_val" and report["input_sizes"] == [[256, 512]]
    flops = report["flops"]
    assert flops["gflops_per_image"] == summary["gflops_per_image"] > 0
    # how many proposals reach the box head depends on the weights: the backbone and the RPN run in
    # full whatever they are; the box head's count is checked exactly in
    # test_box_head_flops_are_its_matrix_products
    assert flops["by_part_gflops"]["backbone"] > flops["by_part_gflops"]["proposal_generator"] > 0
    assert flops["by_part_gflops"]["roi_heads.box_head"] >= 0
    assert "conv" in flops["by_operator_gflops"]
    assert report["activations"]["mactivations_per_image"] > 0
