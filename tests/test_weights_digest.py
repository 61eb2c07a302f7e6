"""Weights you can trust: every file loaded has its SHA-256 logged, MODEL.WEIGHTS_SHA256 pins it
(full digest or prefix) and a mismatch is refused before the file is unpickled."""
import hashlib
import logging
import os

import pytest
import torch
from conftest import TINY, load_config

from cityscapes_ft.checkpoint import load_model
from cityscapes_ft.checks import check_config_runnable
from cityscapes_ft.errors import CheckpointUnreadable, ConfigNotRunnable, WeightsDigestMismatch


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    cfg = load_config(TINY)
    model = load_model(cfg, "", strict=False)
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("pin", ["full", "prefix", "upper"])
def test_the_pinned_digest_or_a_prefix_of_it_loads(weights_file, pin, caplog):
    path, digest = weights_file
    value = {"full": digest, "prefix": digest[:12], "upper": digest[:16].upper()}[pin]
    cfg = load_config(TINY, "MODEL.WEIGHTS", path, "MODEL.WEIGHTS_SHA256", value)
    with caplog.at_level(logging.INFO):
        model = load_model(cfg, strict=True)
    assert f"SHA-256 of {path}: {digest}" in caplog.text
    saved = torch.load(path, map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_another_digest_is_refused_naming_the_file_both_digests_and_the_fix(weights_file, monkeypatch):
    path, digest = weights_file
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    cfg = load_config(TINY, "MODEL.WEIGHTS", path, "MODEL.WEIGHTS_SHA256", wrong)
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a) or {})
    with pytest.raises(WeightsDigestMismatch) as e:
        load_model(cfg, strict=True)
    message = str(e.value)
    assert path in message and digest in message and wrong in message and "download it again" in message
    assert not unpickled  # refused before torch.load/pickle ran


def test_a_digest_that_is_not_hex_or_too_short_is_refused_by_the_config_check():
    for value in ("abc", "not-a-sha256-digest", "g" * 64):
        with pytest.raises(ConfigNotRunnable, match="MODEL.WEIGHTS_SHA256"):
            check_config_runnable(load_config(TINY, "MODEL.WEIGHTS_SHA256", value))


def test_a_file_cut_short_is_named_as_such_not_unpickled_into_a_traceback(weights_file, tmp_path):
    path, _ = weights_file
    cut = tmp_path / "cut.pth"
    data = open(path, "rb").read()
    cut.write_bytes(data[: len(data) // 3])
    cfg = load_config(TINY, "MODEL.WEIGHTS", str(cut))
    with pytest.raises(CheckpointUnreadable, match="truncated") as e:
        load_model(cfg, strict=True)
    assert str(cut) in str(e.value)


@pytest.mark.slow
def test_runs_record_the_digests_of_their_start_and_of_what_they_evaluate(weights_file, synthetic_root, tmp_path):
    import json

    from conftest import train_net

    path, digest = weights_file
    out = tmp_path / "run"
    common = ("MODEL.WEIGHTS", path, "MODEL.WEIGHTS_SHA256", digest[:10], "OUTPUT_DIR", str(out),
              "TEST.EVAL_PERIOD", "2")
    proc = train_net(*common, "SOLVER.MAX_ITER", "2", datasets=synthetic_root)
    assert f"SHA-256 of {path}: {digest}" in proc.stdout + proc.stderr
    record = json.load(open(out / "eval_results" / "cityscapes_ft_instance_val_iter0000002.json"))
    assert record["init_weights"] == {"path": path, "sha256": digest}
    assert record["checkpoint"].endswith("model_final.pth")
    assert digest in (out / "report.html").read_text()
    # resumed, the run still names its starting point (kept in the checkpoint)
    proc = train_net("--resume", *common, "SOLVER.MAX_ITER", "4", datasets=synthetic_root)
    assert "Starting training from iteration 2" in proc.stdout + proc.stderr
    record = json.load(open(out / "eval_results" / "cityscapes_ft_instance_val_iter0000004.json"))
    assert record["init_weights"] == {"path": path, "sha256": digest}
    # --eval-only records the digest of the file it evaluated
    final = out / "model_final.pth"
    final_digest = hashlib.sha256(final.read_bytes()).hexdigest()
    evaluated = tmp_path / "eval"
    proc = train_net("--eval-only", "MODEL.WEIGHTS", str(final), "OUTPUT_DIR", str(evaluated),
                     datasets=synthetic_root)
    assert f"SHA-256 of {final}: {final_digest}" in proc.stdout + proc.stderr
    (path_json,) = (evaluated / "eval_results").iterdir()
    record = json.load(open(path_json))
    assert record["checkpoint_sha256"] == final_digest and record["iteration"] == 4
    assert final_digest in (evaluated / "report.html").read_text()
