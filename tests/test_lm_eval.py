"""The lm_eval evaluator: the VLM's language model taken out whole, and run offline through lm-eval on a local task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixlab.errors import UserError
from mixlab.evaluation.harness import harness_evaluation, harness_metrics
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

GEN_TASK = """\
task: colours_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  max_gen_toks: 3
  until: ["\\n"]
filter_list:
  - name: raw
    filter: [{{function: take_first}}]
  - name: never
    filter: [{{function: regex, regex_pattern: "(zzqq)"}}, {{function: take_first}}]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

GROUP = """\
group: colours_group
task: [colours_local, colours_again]
aggregate_metric_list:
  - metric: acc
    weight_by_size: true
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
    evaluation = evaluator(task_dir).evaluate(model_dir, work, Ctx())
    metrics = evaluation.metrics
    raw = json.loads((work / "lm_eval_results.json").read_text())
    acc = raw["colours_local"]["acc,none"]
    assert set(metrics) == {"lm_eval/colours_local"}
    assert metrics["lm_eval/colours_local"]["acc"] == acc and metrics["lm_eval/colours_local"]["score"] == 100 * acc
    assert acc in {i / 6 for i in range(7)}  # six documents, each right or wrong
    # per-document outcomes: one per document, 3 choices each, their mean the score
    outcomes = evaluation.outcomes["lm_eval/colours_local"]
    assert set(evaluation.outcomes) == set(metrics) and outcomes.rule == "mean"
    assert outcomes.items == outcomes.clusters == [str(i) for i in range(6)]
    assert 100 * outcomes.correct.mean() == pytest.approx(metrics["lm_eval/colours_local"]["score"])
    assert list(outcomes.chance) == pytest.approx([1 / 3] * 6)
    limited = evaluator(task_dir, limit=2).evaluate(model_dir, work, Ctx())
    assert limited.metrics["lm_eval/colours_local"]["acc"] in {0.0, 0.5, 1.0}
    assert limited.outcomes["lm_eval/colours_local"].items == ["0", "1"]
    assert 100 * limited.outcomes["lm_eval/colours_local"].correct.mean() == pytest.approx(
        limited.metrics["lm_eval/colours_local"]["score"]
    )


def test_outcomes_of_a_generation_task_and_a_group(model_dir, task_dir, tmp_path):
    """exact_match under the filter that gives the score (no guessing chance); a group as its subtasks' documents."""
    docs = [json.loads(line) for line in (task_dir / "data.jsonl").read_text().splitlines()]
    # the "never" filter's regex matches nothing, so every answer reads "[invalid]": right on the even documents
    gen = [{**d, "answer": "[invalid]" if i % 2 == 0 else d["choices"][d["label"]]} for i, d in enumerate(docs)]
    (task_dir / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in gen))
    (task_dir / "gen.yaml").write_text(GEN_TASK.format(data=task_dir / "gen.jsonl"))
    (task_dir / "again.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[:4]))
    again = TASK.format(data=task_dir / "again.jsonl").replace("task: colours_local", "task: colours_again")
    (task_dir / "again.yaml").write_text(again)
    (task_dir / "group.yaml").write_text(GROUP)
    opts = LmEval.Options(tasks=["colours_group", "colours_gen"], include_path=str(task_dir), batch_size=4)
    evaluation = LmEval(opts, "text", task_dir.parent).evaluate(model_dir, tmp_path, Ctx())
    metrics, outcomes = evaluation.metrics, evaluation.outcomes
    names = {f"lm_eval/{t}" for t in ("colours_local", "colours_again", "colours_group", "colours_gen")}
    assert set(metrics) == set(outcomes) == names
    for bench, found in outcomes.items():
        assert 100 * found.correct.mean() == pytest.approx(metrics[bench]["score"]), bench

    generated = outcomes["lm_eval/colours_gen"]
    assert metrics["lm_eval/colours_gen"]["score"] == 50.0  # the "never" filter's, not the raw one's (0)
    assert list(generated.correct) == [i % 2 == 0 for i in range(6)] and not generated.chance.any()

    group = outcomes["lm_eval/colours_group"]
    assert group.items == [f"colours_local/{i}" for i in range(6)] + [f"colours_again/{i}" for i in range(4)]
    assert list(group.correct) == [
        *outcomes["lm_eval/colours_local"].correct,
        *outcomes["lm_eval/colours_again"].correct,
    ]
    assert list(group.chance) == pytest.approx([1 / 3] * 10)


def sample(doc_id: int, **values) -> dict:
    return {"doc_id": doc_id, "filter": "none", "resps": [[(-1.0, False)]] * 4, **values}


def test_outcomes_only_where_samples_give_the_score():
    """0/1 values whose mean is the score give outcomes; anything else (tuples for f1, a non-mean aggregate,
    a score not 100 × the rate, a group not weighted by size) gives none."""
    out = {
        "results": {
            "mc": {"acc,none": 0.5, "acc_norm,none": 0.25},
            "f1": {"f1,none": 0.4},
            "median": {"acc,none": 1.0},
            "sub": {"acc,none": 1.0},
            "unweighted": {"acc,none": 0.75},  # mean of mc (0.5) and sub (1.0), not 3 of 6 documents
            "mutual": {"acc_mutual_info,none": 0.0, "acc,none": 1.0},
        },
        "samples": {
            "mc": [sample(i, acc=float(i < 2), acc_norm=float(i == 0)) for i in range(4)],
            "f1": [sample(i, f1=(1, i % 2)) for i in range(3)],
            "median": [sample(i, acc=float(i > 0)) for i in range(3)],
            "sub": [sample(i, acc=1.0) for i in range(2)],
            "mutual": [sample(0, acc=1.0, acc_mutual_info=0.0)],
        },
        "configs": {t: {"output_type": "multiple_choice"} for t in ("mc", "f1", "median", "sub", "mutual")},
        "group_subtasks": {"unweighted": ["mc", "sub"]},
    }
    evaluation = harness_evaluation(out, "lm_eval")
    assert set(evaluation.outcomes) == {"lm_eval/mc", "lm_eval/sub", "lm_eval/mutual"}
    mc = evaluation.outcomes["lm_eval/mc"]
    assert list(mc.correct) == [True, True, False, False] and list(mc.chance) == [0.25] * 4
    assert list(evaluation.outcomes["lm_eval/mutual"].chance) == [0.5]  # 4 responses: 2 choices, 2 unconditional
    # a group weighted by size: its subtasks' documents, named by subtask
    out["results"]["unweighted"]["acc,none"] = 4 / 6
    group = harness_evaluation(out, "lm_eval").outcomes["lm_eval/unweighted"]
    assert group.items == ["mc/0", "mc/1", "mc/2", "mc/3", "sub/0", "sub/1"] and group.correct.sum() == 4
    # a score that is not 100 × the rate, and a task without samples
    assert harness_evaluation({**out, "results": {"mc": out["results"]["mc"]}}, "lm_eval", scale=50).outcomes == {}
    assert harness_evaluation({"results": out["results"]}, "lm_eval").outcomes == {}


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
    assert report["arms"]["tuned"]["score_interval"] == "items"  # one seed: the interval from the outcomes


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
