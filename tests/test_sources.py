"""Sources: LLaVA JSON and HF datasets through the real pipeline, with clear errors or skip-and-count."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mixlab.errors import UserError
from mixlab.store import load_samples
from tests.test_pipeline import run_recipe

RECIPE = """\
[run]
name = "src"

[model]
path = "base"

[sources.mine]
type = "{type}"
path = "{path}"
{extra}

[trainer]
type = "fake_trainer"

[evaluators.bench]
type = "fake_bench"

[arms.all]
sources = ["mine"]
"""


def write_data(tmp_path, records):
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "img" / "ok.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "data.json").write_text(json.dumps(records))


GOOD = {
    "id": "a",
    "image": "img/ok.png",
    "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "red"}],
}
TEXT_ONLY = {"id": "t", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}
MISSING = {**GOOD, "id": "m", "image": "img/nope.png"}
CORRUPT = {**GOOD, "id": "c", "image": "img/broken.png"}
MALFORMED = {"id": "x", "conversations": [{"from": "robot", "value": "?"}]}


def recipe(tmp_path, extra="", type_="llava_json", path="data.json"):
    from tests import fakes

    fakes.write_recipe(tmp_path, RECIPE.format(type=type_, path=path, extra=extra))
    return tmp_path / "recipe.toml"


@pytest.mark.parametrize(
    ("bad", "message"), [(MISSING, "does not exist"), (CORRUPT, "not a readable image"), (MALFORMED, "turn 0 must be")]
)
def test_bad_record_is_named(tmp_path, fake_recipe, bad, message):
    write_data(tmp_path, [GOOD, bad])
    with pytest.raises(UserError) as info:
        run_recipe(recipe(tmp_path))
    text = str(info.value)
    assert "data.json: record 1" in text and f"(id {bad['id']!r})" in text and message in text
    assert 'on_error = "skip"' in text


def test_skip_counts_bad_records(tmp_path, fake_recipe):
    write_data(tmp_path, [GOOD, TEXT_ONLY, MISSING, CORRUPT, MALFORMED])
    report = run_recipe(recipe(tmp_path, 'on_error = "skip"'))
    assert report["arms"]["all"]["n_samples"] == 2
    stage = next(s for s in report["stages"] if s["name"] == "source:mine")
    assert stage["skipped"] == 3


def test_hf_dataset_messages_and_images(tmp_path, fake_recipe):
    import datasets

    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
            ],
            "images": [Image.new("RGB", (8, 8), "red")],
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
            ],
            "images": [],
        },
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    report = run_recipe(recipe(tmp_path, type_="hf_dataset", path="ds"))
    assert report["arms"]["all"]["n_samples"] == 2
    by_text = {
        s["conversations"][1]["value"]: s for s in load_samples(Path(report["run_dir"]) / "selections/all.parquet")
    }
    red, hello = by_text["red"], by_text["hello"]
    assert red["conversations"] == [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]
    assert red["image"] and Image.open(red["image"]).getpixel((0, 0)) == (255, 0, 0)  # the image, written to a file
    assert hello["conversations"] == [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    assert not hello["image"]


def test_hf_dataset_splits_keep_their_own_images(tmp_path, fake_recipe):
    """Row i of each split writes its image to a folder of that split: another split never reads the first's."""
    import datasets

    def rows(colour: str) -> list[dict]:
        user = [{"type": "image"}, {"type": "text", "text": "Colour?"}]
        answer = [{"type": "text", "text": colour}]
        turns = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return [{"messages": turns, "images": [Image.new("RGB", (8, 8), colour)]}]

    splits = {"train": rows("red"), "validation": rows("blue")}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(
        str(tmp_path / "ds")
    )
    seen = {}
    for split in ("train", "validation"):
        report = run_recipe(recipe(tmp_path, f'split = "{split}"', type_="hf_dataset", path="ds"))
        (sample,) = load_samples(Path(report["run_dir"]) / "selections/all.parquet")
        seen[split] = Image.open(sample["image"]).getpixel((0, 0))
    assert seen == {"train": (255, 0, 0), "validation": (0, 0, 255)}


def test_toyworld_and_inspect_commands(tmp_path):
    out = tmp_path / "world"
    proc = subprocess.run(
        [sys.executable, "-m", "mixlab.cli", "toyworld", str(out), "--n-train", "20", "--n-bench", "4"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "manifest.json").is_file()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mixlab.cli",
            "data",
            "inspect",
            str(out / "train" / "color_noisy.json"),
            "--image-root",
            str(out / "images"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "bad record" not in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if "color_noisy" in line and "data in" not in line)
    assert re.findall(r"\b\d+\b", row)[:4] == ["20", "20", "0", "12"]  # 60% of 20 are known noisy


def test_an_image_goes_before_the_first_question_wherever_it_is(tmp_path):
    """A record without <image> shows its image in its first human turn, even after an opening gpt turn; a record
    with <image> keeps it where it is (twice in one turn is left to the collator, which keeps one)."""
    from mixlab.records import to_sample

    Image.new("RGB", (8, 8), "red").save(tmp_path / "i.png")
    turns = [{"from": "gpt", "value": "Hello."}, {"from": "human", "value": "What?"}, {"from": "gpt", "value": "red"}]
    sample = to_sample({"id": "a", "image": "i.png", "conversations": turns}, 0, tmp_path, "open", "s")
    assert [t["value"] for t in sample["conversations"]] == ["Hello.", "<image>\nWhat?", "red"]
    twice = [{"from": "human", "value": "<image> <image> What?"}, {"from": "gpt", "value": "red"}]
    sample = to_sample({"id": "b", "image": "i.png", "conversations": twice}, 1, tmp_path, "open", "s")
    assert sample["conversations"][0]["value"] == "<image> <image> What?"
