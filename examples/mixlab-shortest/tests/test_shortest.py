"""The plugin's own tests: each component called directly through mixlab.testing, no pipeline and no model."""

import pytest
from mixlab.errors import UserError
from mixlab.registry import make_registry
from mixlab.testing import StubContext, build, samples
from pydantic import ValidationError

from mixlab_shortest import plugin
from mixlab_shortest.plugin import AnswerLength, Shortest


def test_answer_length_counts_words_or_characters(tmp_path):
    ctx = StubContext(tmp_path)
    pool = samples(2, source="long", answer="no, it is red") + samples(1, source="short", answer="yes")
    assert build(AnswerLength).score(pool, ctx)["answer_length"].tolist() == [4, 4, 1]
    assert build(AnswerLength, unit="characters").score(pool, ctx)["answer_length"].tolist() == [13, 13, 3]


def test_shortest_keeps_the_shortest_share(tmp_path):
    ctx = StubContext(tmp_path)
    pool = samples(2, source="long", answer="no, it is red") + samples(2, source="short", answer="yes")
    scores = build(AnswerLength).score(pool, ctx)
    selection = build(Shortest, fraction=0.5).select(pool, scores, ctx)
    assert selection.ids == ["short/0", "short/1"]
    assert selection.info == {"kept": 2}


def test_bad_options_and_a_missing_column_are_errors(tmp_path):
    with pytest.raises(ValidationError):
        build(Shortest, fraction=0)
    with pytest.raises(UserError, match="answer_length"):
        build(Shortest).select(samples(2), {}, StubContext(tmp_path))


def test_registered_through_the_hooks(monkeypatch):
    monkeypatch.setenv("MIXLAB_LOAD_PLUGINS", "")  # this module only, even where the package is installed
    registry = make_registry((plugin,))
    assert registry.get("scorer", "answer_length") is AnswerLength
    assert registry.get("selector", "shortest") is Shortest
