"""The vlmevalkit evaluator: the --config it writes, the score files it reads (VLMEvalKit's own layouts), and a run of
a stand-in checkout whose run.py writes those files the way VLMEvalKit does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixlab.errors import UserError
from mixlab.plugins.evaluators.vlmevalkit import MODEL_NAME, VLMEvalKit, dataset_metrics, write_config

# what VLMEvalKit writes: report_acc (hit rates 0-1, one row per split) and MME_rating (acc + acc+ points per subtask)
MMB_ACC = "split,Overall,AR,CP,FP-C,FP-S,LR,RR\ndev,0.75,0.5,1.0,0.6,0.8,0.7,0.9\n"
MME_SCORE = "perception,reasoning,OCR,color,count\n1500.5,320.0,140.0,170.0,150.0\n"
POPE_SCORE = "Overall,adversarial,popular\n85.5,84.0,87.0\n"

FAKE_RUN = """\
import argparse, json, os, sys
p = argparse.ArgumentParser()
p.add_argument("--config"); p.add_argument("--work-dir"); p.add_argument("--fail", action="store_true")
a = p.parse_args()
if a.fail:
    print("CUDA out of memory", file=sys.stderr); sys.exit(3)
config = json.load(open(a.config))
(model,) = config["model"]
assert os.path.isfile(os.path.join(config["model"][model]["model_path"], "config.json"))
out = os.path.join(a.work_dir, model, "T20261122_G0000000")
os.makedirs(out, exist_ok=True)
for name in config["data"]:
    if name == "MME":
        open(os.path.join(out, f"{model}_{name}_score.csv"), "w").write(MME)
    else:
        open(os.path.join(out, f"{model}_{name}_acc.csv"), "w").write(MMB)
""".replace("MME)", f"{MME_SCORE!r})").replace("MMB)", f"{MMB_ACC!r})")


class Ctx:
    def log(self, message: str) -> None:
        pass


def evaluator(base: Path, **options) -> VLMEvalKit:
    return VLMEvalKit(VLMEvalKit.Options(checkout="VLMEvalKit", **options), "vlm", base)


def test_config_json(tmp_path):
    options = VLMEvalKit.Options(checkout="x", datasets=["MME", "MMBench_DEV_EN"], model_kwargs={"max_new_tokens": 8})
    write_config(tmp_path / "c.json", Path("/ckpt"), options)
    assert json.loads((tmp_path / "c.json").read_text()) == {
        "model": {MODEL_NAME: {"class": "LLaVA_Next", "model_path": "/ckpt", "max_new_tokens": 8}},
        "data": {"MME": {}, "MMBench_DEV_EN": {}},
    }


def test_reads_vlmevalkits_score_files(tmp_path):
    run = tmp_path / MODEL_NAME / "T20261122_G0000000"
    run.mkdir(parents=True)
    (run / f"{MODEL_NAME}_MMBench_DEV_EN_acc.csv").write_text(MMB_ACC)
    (run / f"{MODEL_NAME}_MME_score.csv").write_text(MME_SCORE)
    (run / f"{MODEL_NAME}_POPE_score.csv").write_text(POPE_SCORE)
    mmb = dataset_metrics(tmp_path, "MMBench_DEV_EN")
    assert mmb["score"] == mmb["Overall"] == 75.0 and mmb["CP"] == 100.0
    mme = dataset_metrics(tmp_path, "MME")
    assert mme["total"] == 1820.5 and mme["score"] == pytest.approx(1820.5 / 2800 * 100)
    assert dataset_metrics(tmp_path, "POPE")["score"] == 85.5
    with pytest.raises(UserError, match="no score file for SEEDBench_IMG"):
        dataset_metrics(tmp_path, "SEEDBench_IMG")


def test_missing_checkout_says_how_to_install(tmp_path):
    with pytest.raises(UserError, match="no VLMEvalKit checkout.*git clone"):
        evaluator(tmp_path, datasets=["MME"]).run_py()


def test_runs_a_checkout_in_a_subprocess(tmp_path):
    (tmp_path / "VLMEvalKit").mkdir()
    (tmp_path / "VLMEvalKit" / "run.py").write_text(FAKE_RUN)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    work = tmp_path / "work"
    work.mkdir()
    metrics = evaluator(tmp_path, datasets=["MME", "MMBench_DEV_EN"]).evaluate(model, work, Ctx())
    assert set(metrics) == {"vlmevalkit/MME", "vlmevalkit/MMBench_DEV_EN"}
    assert metrics["vlmevalkit/MMBench_DEV_EN"]["score"] == 75.0
    with pytest.raises(UserError, match=r"(?s)exited with code 3; see .*run.log.*CUDA out of memory"):
        evaluator(tmp_path, datasets=["MME"], args=["--fail"]).evaluate(model, work, Ctx())


def test_a_python_relative_to_the_recipe_runs_from_the_checkout(tmp_path):
    """`python` with a folder is relative to the recipe, as check() finds it; it ran unresolved from the checkout."""
    import os
    import sys

    (tmp_path / "VLMEvalKit").mkdir()
    (tmp_path / "VLMEvalKit" / "run.py").write_text(FAKE_RUN)
    (tmp_path / "env" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, tmp_path / "env" / "bin" / "python")
    model, work = tmp_path / "model", tmp_path / "work"
    model.mkdir()
    (model / "config.json").write_text("{}")
    work.mkdir()
    vlm = evaluator(tmp_path, datasets=["MMBench_DEV_EN"], python="env/bin/python")
    assert vlm.check() == [] and vlm.interpreter() == str(tmp_path / "env" / "bin" / "python")
    assert vlm.evaluate(model, work, Ctx())["vlmevalkit/MMBench_DEV_EN"]["score"] == 75.0
