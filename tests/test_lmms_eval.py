"""The lmms_eval adapter: lmms-eval's requests answered by a mixlab model, and a local task run through lmms-eval.

lmms-eval is never installed with mixlab (it breaks torchvision/transformers on CPU machines); the request protocol
is tested here without it, and the run through lmms-eval itself where it is installed (`scripts/lmms_eval_check.sh`,
which CI runs in a separate venv).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from mixlab.errors import UserError
from mixlab.evaluation.harness import harness_evaluation
from mixlab.evaluation.lmms_requests import MixlabRequests, stop_strings, truncate_at
from mixlab.models.predict import PromptItem, choose, continuation_logprobs, generate
from mixlab.plugins.evaluators.lmms_eval import LmmsEval
from tests.tiny_vlm import NAMES, QUESTION, build_test_model, colour_samples


class Ctx:
    seed = 0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_test_model(tmp_path_factory.mktemp("lmms") / "model", seed=4)


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> list[dict]:
    samples = colour_samples(6, tmp_path_factory.mktemp("lmms_img"), seed=7)
    return [
        {"image": Image.open(s["image"]).convert("RGB"), "question": QUESTION, "choices": NAMES[:4], "label": i % 4}
        for i, s in enumerate(samples)
    ]


@pytest.fixture(scope="module")
def answerer(model_dir, docs) -> MixlabRequests:
    from mixlab.models.loading import load_model

    model, processor = load_model(model_dir)
    requests = MixlabRequests(model, processor, batch_size=4)
    requests.task_dict = {"toy": {"test": docs}}
    return requests


def visual(doc: dict) -> list:
    return [doc["image"]]


def request(*args) -> SimpleNamespace:
    return SimpleNamespace(args=args)


def test_truncate_and_stop_strings():
    assert truncate_at("red\nblue. x", ("\n", ".")) == "red"
    assert truncate_at("red", ("", "\n")) == "red"
    assert stop_strings({"until": "\n"}) == ("\n",) and stop_strings({}) == ()


def test_loglikelihood_is_the_answer_likelihood(answerer, docs):
    reqs = [request(QUESTION, f" {c}", visual, i, "toy", "test") for i in range(3) for c in NAMES[:4]]
    got = answerer.loglikelihood(reqs)
    items = [PromptItem(QUESTION, docs[i]["image"]) for i in range(3) for _ in NAMES[:4]]
    assert got == continuation_logprobs(answerer.model, answerer.processor, items, NAMES[:4] * 3)
    picks = [max(range(4), key=lambda k, i=i: got[4 * i + k][0]) for i in range(3)]
    assert picks == choose(answerer.model, answerer.processor, items[::4], [NAMES[:4]] * 3)
    # doc_to_target given as a function of the document
    by_function = answerer.loglikelihood([request(QUESTION, lambda d: NAMES[d["label"]], visual, 1, "toy", "test")])
    # alone in its batch (no padding), so equal to the batched score up to float error (the 1e-5 of option scoring)
    ((logprob, greedy),) = by_function
    assert logprob == pytest.approx(got[4 + docs[1]["label"]][0], rel=1e-5) and greedy == got[4 + docs[1]["label"]][1]


def test_generate_until_batches_by_kwargs_and_keeps_order(answerer, docs):
    short, long = {"max_new_tokens": 1}, {"max_new_tokens": 4, "until": ["blue"]}
    kwargs = [short, long, short, long, long]
    got = answerer.generate_until([request(QUESTION, k, visual, i, "toy", "test") for i, k in enumerate(kwargs)])
    for i, k in enumerate(kwargs):
        item = PromptItem(QUESTION, docs[i]["image"])
        alone = generate(answerer.model, answerer.processor, [item], max_new_tokens=k["max_new_tokens"])
        assert got[i] == truncate_at(alone[0], stop_strings(k)).strip()


def test_multi_round_feeds_each_answer_back(answerer, docs):
    seen = []

    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        seen.append((list(previous_output), round_idx, previous_round_info))
        if round_idx == 3:
            return None, None, True, previous_output, None
        return [doc["image"]], f"Round {round_idx}. {QUESTION}", False, previous_output, {"round": round_idx}

    out = answerer.generate_until_multi_round(
        [request(QUESTION, {"max_new_tokens": 2}, visual, doc_to_text, 0, "toy", "test")]
    )
    assert len(out) == 1 and len(out[0]) == 3
    assert [r for _, r, _ in seen] == [1, 2, 3] and seen[1][2] == {"round": 1}
    assert seen[0][0] == out[0][:1] and seen[1][0] == out[0][:2] and seen[2][0] == out[0]
    second = generate(
        answerer.model, answerer.processor, [PromptItem(f"Round 1. {QUESTION}", docs[0]["image"])], max_new_tokens=2
    )
    assert out[0][1] == second[0]


def test_several_images_or_video_are_a_clear_error(answerer, docs):
    two = request(QUESTION, {"max_new_tokens": 1}, lambda d: [d["image"], d["image"]], 0, "toy", "test")
    with pytest.raises(UserError, match="one image per question"):
        answerer.generate_until([two])
    with pytest.raises(UserError, match="one image per question"):
        answerer.generate_until([request(QUESTION, {}, lambda d: ["clip.mp4"], 0, "toy", "test")])


def test_missing_lmms_eval_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lmms_eval", None)
    monkeypatch.setitem(sys.modules, "lmms_eval.evaluator", None)
    evaluator = LmmsEval(LmmsEval.Options(tasks=["mme"]), "vlm", tmp_path)
    with pytest.raises(UserError, match="filelock<4' && pip uninstall -y torchvision timm"):
        evaluator.evaluate(tmp_path, tmp_path, Ctx())


def lmms_sample(doc_id: int, choices: int, **values) -> dict:
    """A sample as lmms-eval 0.7 logs it: no filter name, each request's serializable arguments in one flat list."""
    arguments = [a for k in range(choices) for a in (QUESTION, f" {NAMES[k]}", doc_id, "toy", "test")]
    return {"doc_id": doc_id, "doc": {}, "target": 0, "arguments": arguments, "resps": [["x"]] * choices, **values}


def test_outcomes_from_lmms_eval_samples():
    """lmms-eval's sample logs: chance from the responses, not the flattened arguments; numpy 0/1 values; no
    outcomes where a document is logged twice (several filters, which lmms-eval does not name) or the score is not
    100 × a rate (MME's perception points)."""
    import numpy as np

    out = {
        "results": {
            "mc": {"acc,none": 0.5},
            "gen": {"exact_match,none": 1 / 3},
            "two_filters": {"exact_match,a": 0.5, "exact_match,b": 0.5},
            "mme": {"mme_perception_score,none": 1400.0},
        },
        "samples": {
            "mc": [lmms_sample(i, 4, acc=float(i % 2)) for i in range(4)],
            "gen": [lmms_sample(i, 1, exact_match=np.float64(i == 0)) for i in range(3)],
            "two_filters": [lmms_sample(i % 2, 1, exact_match=np.float64(i % 2)) for i in range(4)],
            "mme": [lmms_sample(0, 1, mme_perception_score={"question_id": 0, "score": 1})],
        },
        "configs": {"mc": {"output_type": "multiple_choice"}, "gen": {"output_type": "generate_until"}},
        "group_subtasks": {"mc": [], "gen": [], "two_filters": [], "mme": []},
    }
    without_mme = {**out, "results": {k: v for k, v in out["results"].items() if k != "mme"}}
    evaluation = harness_evaluation(without_mme, "lmms_eval")
    assert set(evaluation.outcomes) == {"lmms_eval/mc", "lmms_eval/gen"}
    mc, gen = evaluation.outcomes["lmms_eval/mc"], evaluation.outcomes["lmms_eval/gen"]
    assert list(mc.correct) == [False, True, False, True] and list(mc.chance) == [0.25] * 4
    assert list(gen.correct) == [True, False, False] and list(gen.chance) == [0.0] * 3
    mme = {**out, "results": {"mme": out["results"]["mme"]}}
    assert harness_evaluation(mme, "lmms_eval", score_metric="mme_perception_score", scale=100 / 2000).outcomes == {}


# ---- through lmms-eval itself (where it is installed) -----------------------------------------------------------

MC_TASK = """\
task: toy_colours_mc
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.0
"""

GEN_TASK = """\
task: toy_colours_gen
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  max_new_tokens: 3
  until: ["\\n"]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.0
"""


def greedy_answers(answerer: MixlabRequests, docs: list[dict]) -> list[str]:
    items = [PromptItem(d["question"], d["image"]) for d in docs]
    return [
        truncate_at(a, ["\n"]).strip() for a in generate(answerer.model, answerer.processor, items, max_new_tokens=3)
    ]


@pytest.fixture
def task_dir(tmp_path, docs, answerer) -> Path:
    """Two local tasks on the colour squares; every other reference answer is the model's own greedy answer."""
    import datasets

    own = greedy_answers(answerer, docs)
    references = [own[i] if i % 2 == 0 else NAMES[d["label"]] for i, d in enumerate(docs)]
    folder = tmp_path / "tasks"
    folder.mkdir()
    table = datasets.Dataset.from_dict(
        {
            "image": [d["image"] for d in docs],
            "question": [d["question"] for d in docs],
            "choices": [d["choices"] for d in docs],
            "label": [d["label"] for d in docs],
            "answer": references,
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "question": datasets.Value("string"),
                "choices": datasets.Sequence(datasets.Value("string")),
                "label": datasets.Value("int64"),
                "answer": datasets.Value("string"),
            }
        ),
    )
    table.to_parquet(folder / "colours.parquet")
    (folder / "utils.py").write_text('def doc_to_visual(doc):\n    return [doc["image"].convert("RGB")]\n')
    (folder / "mc.yaml").write_text(MC_TASK.format(data=folder / "colours.parquet"))
    (folder / "gen.yaml").write_text(GEN_TASK.format(data=folder / "colours.parquet"))
    return folder


def needs_lmms_eval() -> None:
    """Skip where lmms-eval is not installed, except in scripts/lmms_eval_check.sh, which requires it."""
    if os.environ.get("MIXLAB_REQUIRE_LMMS_EVAL") != "1":
        pytest.importorskip("lmms_eval")


def test_registered_with_lmms_eval():
    needs_lmms_eval()
    from lmms_eval.models import MODEL_REGISTRY_V2

    from mixlab.evaluation.lmms_model import MixlabLmms

    assert MODEL_REGISTRY_V2.get_model_class("mixlab") is MixlabLmms


def test_local_tasks_through_lmms_eval_match_mixlab(model_dir, task_dir, answerer, docs, tmp_path):
    needs_lmms_eval()
    options = LmmsEval.Options(tasks=["toy_colours_mc", "toy_colours_gen"], include_path=str(task_dir), batch_size=4)
    evaluation = LmmsEval(options, "vlm", tmp_path).evaluate(model_dir, tmp_path, Ctx())
    metrics = evaluation.metrics
    assert (tmp_path / "lmms_eval_results.json").exists()

    items = [PromptItem(d["question"], d["image"]) for d in docs]
    picks = choose(answerer.model, answerer.processor, items, [d["choices"] for d in docs])
    acc = sum(p == d["label"] for p, d in zip(picks, docs, strict=True)) / len(docs)
    assert metrics["lmms_eval/toy_colours_mc"]["acc"] == pytest.approx(acc)
    assert metrics["lmms_eval/toy_colours_mc"]["score"] == pytest.approx(100 * acc)

    own = greedy_answers(answerer, docs)
    exact = [own[i] == (own[i] if i % 2 == 0 else NAMES[d["label"]]) for i, d in enumerate(docs)]
    assert metrics["lmms_eval/toy_colours_gen"]["exact_match"] == pytest.approx(sum(exact) / len(docs))

    # per-document outcomes from lmms-eval's samples: the same documents right, their mean the score
    assert set(evaluation.outcomes) == set(metrics)
    mc, gen = evaluation.outcomes["lmms_eval/toy_colours_mc"], evaluation.outcomes["lmms_eval/toy_colours_gen"]
    assert mc.items == gen.items == [str(i) for i in range(len(docs))]
    assert list(mc.correct) == [p == d["label"] for p, d in zip(picks, docs, strict=True)]
    assert list(mc.chance) == pytest.approx([1 / 4] * len(docs)) and not gen.chance.any()
    assert list(gen.correct) == exact
    for bench, found in evaluation.outcomes.items():
        assert 100 * found.correct.mean() == pytest.approx(metrics[bench]["score"])


def test_unknown_task_is_a_user_error(task_dir, tmp_path):
    needs_lmms_eval()
    options = LmmsEval.Options(tasks=["toy_colours_mcq"], include_path=str(task_dir))
    with pytest.raises(UserError, match="no task 'toy_colours_mcq'.*Did you mean 'toy_colours_mc'"):
        LmmsEval(options, "vlm", tmp_path).evaluate(tmp_path, tmp_path, Ctx())


def test_task_data_that_cannot_be_loaded_is_a_user_error(model_dir, task_dir, tmp_path):
    needs_lmms_eval()
    (task_dir / "colours.parquet").unlink()
    options = LmmsEval.Options(tasks=["toy_colours_gen"], include_path=str(task_dir))
    with pytest.raises(UserError, match="could not load a task's data"):
        LmmsEval(options, "vlm", tmp_path).evaluate(model_dir, tmp_path, Ctx())


def test_built_as_lmms_eval_builds_its_models(model_dir):
    """The way lmms-eval's CLI builds a model: from an argument string, with its own batch_size and device."""
    needs_lmms_eval()
    from lmms_eval.models import MODEL_REGISTRY_V2

    model_class = MODEL_REGISTRY_V2.get_model_class("mixlab")
    lm = model_class.create_from_arg_string(f"pretrained={model_dir}", {"batch_size": "auto", "device": "cpu"})
    assert lm.batch_size == 8 and lm.model.device.type == "cpu" and lm.is_simple
    assert model_class.create_from_arg_string(f"pretrained={model_dir},batch_size=3").batch_size == 3
