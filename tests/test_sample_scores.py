"""Per-sample scores (answer NLL, pooled activations): batched equals one at a time, the NLL is the training loss,
the last layer runs only where read, two batches at once give the same scores."""

from __future__ import annotations

import numpy as np
import pytest

from mixlab.data import sample_to_row
from mixlab.models.collator import VisionCollator
from mixlab.models.forward import trained_positions
from mixlab.models.sample_scores import answer_nll
from tests.tiny_vlm import build_test_model, colour_samples, text_samples


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mixlab.models.loading import load_model

    root = tmp_path_factory.mktemp("sample_scores")
    model, processor = load_model(build_test_model(root / "model", seed=3))
    return model, processor, colour_samples(9, root / "img", seed=5) + text_samples(4)


def test_answer_nll_batched_equals_single(setup):
    model, processor, samples = setup
    batched = answer_nll(model, processor, samples, batch_size=5)
    single = np.array([answer_nll(model, processor, [s], batch_size=1)[0] for s in samples])
    assert batched.shape == (len(samples),) and np.isfinite(batched).all()
    np.testing.assert_allclose(batched, single, atol=1e-4, rtol=0)


def test_answer_nll_matches_training_loss(setup):
    """One sample's mean NLL is the model's own loss on the collated (training-masked) batch."""
    import torch

    model, processor, samples = setup
    batch = VisionCollator(processor)([sample_to_row(samples[0])])
    with torch.no_grad():
        loss = float(model(**batch).loss)
    assert answer_nll(model, processor, samples[:1])[0] == pytest.approx(loss, abs=1e-5)


def test_last_layer_only_keeps_the_logits_it_is_asked_for(setup):
    """Inside `at`, the last layer's MLP sees only the asked-for positions; their logits are the full forward's, others
    are not. Outside `at`, the installed hooks leave the model alone."""
    import torch

    from mixlab.models.decoder import LastLayerOnly, decoder_layers

    model, processor, samples = setup
    batch = dict(VisionCollator(processor)([sample_to_row(s) for s in samples[:4]]))
    where = trained_positions(batch.pop("labels"))
    rows_seen = []
    handle = decoder_layers(model)[-1].mlp.register_forward_hook(lambda m, a, o: rows_seen.append(a[0].shape))
    try:
        with torch.inference_mode():
            full = model(**batch).logits
            with LastLayerOnly(model) as tail:
                hooked = model(**batch).logits
                with tail.at(where):
                    part = model(**batch).logits
    finally:
        handle.remove()
    torch.testing.assert_close(hooked, full, atol=0, rtol=0)
    assert rows_seen[1][0] == rows_seen[0][0] and rows_seen[2][0] == int(where.sum()) < where.numel() // 4
    torch.testing.assert_close(part[where], full[where], atol=1e-5, rtol=1e-5)
    other = ~where & batch["attention_mask"].bool()
    assert (part[other] - full[other]).abs().max() > 1e-2


def test_last_layer_hooks_keep_each_threads_positions(setup):
    """Two threads inside one `LastLayerOnly` at the same moment, each with its own positions (batches of the same
    shape, different positions), get the logits that each gets alone."""
    import threading

    import torch

    from mixlab.models.decoder import LastLayerOnly, decoder_layers

    model, processor, samples = setup
    collate = VisionCollator(processor)
    batches = [dict(collate([sample_to_row(s) for s in part])) for part in (samples[:4], samples[4:8])]
    assert batches[0]["input_ids"].shape == batches[1]["input_ids"].shape
    wheres = [trained_positions(b.pop("labels")) for b in batches]
    every_third = torch.arange(wheres[1].shape[1]) % 3 == 0
    wheres[1] = batches[1]["attention_mask"].bool() & every_third  # other positions than the first thread's
    alone, together = [], [None, None]
    meet = threading.Barrier(2)

    def score(tail, i):
        with torch.inference_mode(), tail.at(wheres[i]):
            together[i] = model(**batches[i]).logits

    with LastLayerOnly(model) as tail:
        with torch.inference_mode():
            for batch, where in zip(batches, wheres, strict=True):
                with tail.at(where):
                    alone.append(model(**batch).logits)
        # both threads wait at the last layer's input, so that their hooked parts run at the same time
        handle = decoder_layers(model)[-1].register_forward_pre_hook(lambda m, a: [meet.wait(timeout=60)] and None)
        try:
            threads = [threading.Thread(target=score, args=(tail, i)) for i in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            handle.remove()
    for i in (0, 1):
        torch.testing.assert_close(together[i][wheres[i]], alone[i][wheres[i]], atol=1e-5, rtol=1e-5)


def test_scores_with_two_batches_at_once_equal_one_at_a_time(setup):
    from mixlab.models.sample_scores import pooled_activations

    model, processor, samples = setup
    one = answer_nll(model, processor, samples, batch_size=3, at_once=1)
    two = answer_nll(model, processor, samples, batch_size=3, at_once=2)
    np.testing.assert_allclose(two, one, rtol=1e-6, atol=1e-6)
    one = pooled_activations(model, processor, samples, [0, 1], batch_size=3, at_once=1)
    two = pooled_activations(model, processor, samples, [0, 1], batch_size=3, at_once=2)
    np.testing.assert_allclose(two, one, rtol=1e-6, atol=1e-7)


def test_answer_nll_runs_the_last_layer_where_read_with_the_same_scores(setup, monkeypatch):
    from mixlab.models import sample_scores

    model, processor, samples = setup
    key = (type(model), type(sample_scores.decoder_layers(model)[-1]))
    monkeypatch.setattr(sample_scores, "_TAIL_CHECKED", {key: False})
    every_position = answer_nll(model, processor, samples, batch_size=5)
    monkeypatch.setattr(sample_scores, "_TAIL_CHECKED", {})
    read_only = answer_nll(model, processor, samples, batch_size=5)
    assert sample_scores._TAIL_CHECKED == {key: True}  # the probe agreed: the batches ran the last layer where read
    np.testing.assert_allclose(read_only, every_position, rtol=1e-5, atol=1e-6)


def test_answer_nll_keeps_every_position_when_the_probe_disagrees(setup, monkeypatch):
    """A model where skipping positions would change the scores (here: the first layer's MLP is the one skipped)
    is caught by the probe and scored in full, with a warning."""
    from mixlab.models import decoder, sample_scores

    model, processor, samples = setup
    key = (type(model), type(sample_scores.decoder_layers(model)[-1]))
    monkeypatch.setattr(sample_scores, "_TAIL_CHECKED", {key: False})
    expected = answer_nll(model, processor, samples, batch_size=5)
    monkeypatch.setattr(decoder, "tail_modules", lambda m: [decoder.decoder_layers(m)[0].mlp])
    monkeypatch.setattr(sample_scores, "_TAIL_CHECKED", {key: True})
    assert np.nanmax(np.abs(answer_nll(model, processor, samples, batch_size=5) - expected)) > 1e-3  # it would harm
    monkeypatch.setattr(sample_scores, "_TAIL_CHECKED", {})
    with pytest.warns(UserWarning, match="running every position"):
        got = answer_nll(model, processor, samples, batch_size=5)
    assert sample_scores._TAIL_CHECKED == {key: False}
    np.testing.assert_allclose(got, expected, rtol=0, atol=0)
