"""An ``answer_length`` scorer, a ``shortest`` selector and a ``shortest-hello`` command, registered through hooks."""

from __future__ import annotations

from typing import Literal

import click
import numpy as np
from mixlab import hookimpl
from mixlab.components import Options, RunContext, Scorer, Selection, Selector
from mixlab.data import Sample
from mixlab.errors import UserError
from pydantic import Field


class AnswerLengthOptions(Options):
    unit: Literal["words", "characters"] = Field("words", description="What to count in the assistant's answers.")


class AnswerLength(Scorer):
    """The length of each sample's assistant answers, all turns together: one column, ``answer_length``."""

    name = "answer_length"
    Options = AnswerLengthOptions

    def score(self, samples: list[Sample], ctx: RunContext) -> dict[str, np.ndarray]:
        def size(text: str) -> int:
            return len(text.split()) if self.options.unit == "words" else len(text)

        lengths = [sum(size(t["value"]) for t in s["conversations"] if t["from"] == "gpt") for s in samples]
        return {"answer_length": np.array(lengths, dtype=float)}


class ShortestOptions(Options):
    column: str = Field("answer_length", description="The score column to sort by, lowest first.")
    fraction: float = Field(0.5, gt=0, le=1, description="Share of the pool to keep.")


class Shortest(Selector):
    """Keep the share of the pool with the lowest values in a score column: the shortest answers by default."""

    name = "shortest"
    Options = ShortestOptions

    def select(self, samples: list[Sample], scores: dict[str, np.ndarray], ctx: RunContext) -> Selection:
        column = self.options.column
        if column not in scores:
            raise UserError(
                f"[selectors.{self.label}]: no score column {column!r} (the named scorers give {sorted(scores)}). "
                "Add an `answer_length` scorer to this selector's `scorers`."
            )
        k = int(len(samples) * self.options.fraction)  # floor, as the built-in selectors count
        order = np.argsort(scores[column], kind="stable")[:k]  # ties keep pool order
        return Selection(ids=[samples[i]["id"] for i in sorted(order)], info={"kept": k})


@hookimpl
def register_scorers(register):
    register(AnswerLength)


@hookimpl
def register_selectors(register):
    register(Shortest)


@hookimpl
def register_commands(cli):
    @cli.command(name="shortest-hello")
    def hello():
        """Say that the example plugin is loaded."""
        click.echo("mixlab-shortest is loaded")
