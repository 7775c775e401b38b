"""The lm_eval evaluator: the VLM's language model taken out whole, and run offline through lm-eval on a local task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixlab.errors import UserError
from mixlab.evaluation.harness import harness_metrics
from mixlab.plugins.evaluators.lm_eval import LmEval, language_model
from tests.tiny_vlm import build_test_model

TASK = """\
task: colours_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


class Ctx:
    seed = 0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_test_model(tmp_path_factory.mktemp("lmeval") / "model", seed=2)


@pytest.fixture
def task_dir(tmp_path) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    docs = [
        {"prompt": f"What color is the square? It is {c}. Again, it is", "choices": ["red", "blue", c], "label": 2}
        for c in ("green", "yellow", "purple", "orange", "red", "blue")
    ]
    (folder / "data.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "colours.yaml").write_text(TASK.format(data=folder / "data.jsonl"))
    return folder


def evaluator(task_dir: Path, **options) -> LmEval:
    opts = LmEval.Options(tasks=["colours_local"], include_path=str(task_dir), batch_size=4, **options)
    return LmEval(opts, "text", task_dir.parent)


def test_language_model_is_the_vlms_own(model_dir):
    import torch

    from mixlab.models.loading import load_model

    vlm, processor = load_model(model_dir)
    lm, tokenizer = language_model(model_dir)
    ids = tokenizer("What color is the square? It is red.", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = vlm(input_ids=ids).logits
        got = lm(input_ids=ids).logits
    assert type(lm).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(got, expected)


def test_local_task_offline_scores_acc_as_0_100(model_dir, task_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    metrics = evaluator(task_dir).evaluate(model_dir, work, Ctx())
    raw = json.loads((work / "lm_eval_results.json").read_text())
    acc = raw["colours_local"]["acc,none"]
    assert set(metrics) == {"lm_eval/colours_local"}
    assert metrics["lm_eval/colours_local"]["acc"] == acc and metrics["lm_eval/colours_local"]["score"] == 100 * acc
    assert acc in {i / 6 for i in range(7)}  # six documents, each right or wrong
    limited = evaluator(task_dir, limit=2).evaluate(model_dir, work, Ctx())["lm_eval/colours_local"]["acc"]
    assert limited in {0.0, 0.5, 1.0}


def test_harness_metrics_rule():
    results = {"a": {"alias": "a", "exact_match,none": 0.25, "exact_match_stderr,none": 0.1}}
    assert harness_metrics(results, "lm_eval") == {"lm_eval/a": {"exact_match": 0.25, "score": 25.0}}
    with pytest.raises(UserError, match="not any of"):
        harness_metrics({"b": {"alias": "b", "perplexity,none": 3.0}}, "lm_eval")
    mme = {"mme": {"alias": "mme", "mme_perception_score,none": 1400.0, "mme_cognition_score,none": 300.0}}
    got = harness_metrics(mme, "lmms_eval", score_metric="mme_perception_score", scale=100 / 2000)
    assert got["lmms_eval/mme"]["score"] == pytest.approx(70.0)
    with pytest.raises(UserError, match="not 'acc'"):
        harness_metrics(mme, "lmms_eval", score_metric="acc")


def test_unknown_task_and_missing_folder_are_user_errors(task_dir):
    with pytest.raises(UserError, match="no task 'colours_locl'.*Did you mean 'colours_local'"):
        LmEval(LmEval.Options(tasks=["colours_locl"], include_path=str(task_dir)), "text", task_dir).task_manager()
    with pytest.raises(UserError, match="is not a folder"):
        LmEval(LmEval.Options(tasks=["x"], include_path="nowhere"), "text", task_dir).task_manager()


def test_from_a_recipe(model_dir, task_dir, tmp_path):
    from tests.test_pipeline import run_recipe

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f"""\
[run]
name = "text"

[model]
path = "{model_dir}"

[sources.toy]
type = "toyworld"
n_train = 10
n_bench = 4
sources = ["color_clean"]

[trainer]
type = "llava_sft"
batch_size = 8

[evaluators.text]
type = "lm_eval"
tasks = ["colours_local"]
include_path = "tasks"

[arms.tuned]
sources = ["color_clean"]
"""
    )
    report = run_recipe(recipe, tmp_path / "run")
    metrics = report["arms"]["tuned"]["metrics"]
    assert list(metrics) == ["lm_eval/colours_local"] and 0 <= metrics["lm_eval/colours_local"]["score"] <= 100
    assert report["arms"]["tuned"]["score"] == metrics["lm_eval/colours_local"]["score"]


def test_task_data_that_cannot_be_loaded_is_a_user_error(model_dir, task_dir, tmp_path):
    (task_dir / "data.jsonl").unlink()
    with pytest.raises(UserError, match="could not load a task's data"):
        evaluator(task_dir).evaluate(model_dir, tmp_path, Ctx())


def test_missing_data_is_found_through_causes_and_retries():
    from mixlab.evaluation.harness import task_data_errors

    class Attempt:
        def exception(self):
            return type("ConnectionError", (OSError,), {})("offline")

    class RetryError(Exception):
        last_attempt = Attempt()

    with pytest.raises(UserError, match="ConnectionError: offline"):
        with task_data_errors("x", "lmms-eval"):
            raise RetryError()
    with pytest.raises(ValueError, match="a bug"):
        with task_data_errors("x", "lmms-eval"):
            raise ValueError("a bug")
