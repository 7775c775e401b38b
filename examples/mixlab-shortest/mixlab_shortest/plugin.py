"""Registers an ``answer_length`` scorer and a ``shortest`` selector through mixlab's hooks."""

import click
import numpy as np
from pydantic import Field

from mixlab import hookimpl
from mixlab.components import Options, Scorer, Selection, Selector


class AnswerLength(Scorer):
    """Words in the assistant's answers: column ``answer_words``."""

    name = "answer_length"

    def score(self, samples, ctx):
        words = [sum(len(t["value"].split()) for t in s["conversations"] if t["from"] == "gpt") for s in samples]
        return {"answer_words": np.array(words, dtype=float)}


class ShortestOptions(Options):
    fraction: float = Field(0.5, gt=0, le=1, description="Share of the pool to keep.")


class Shortest(Selector):
    """Keep the samples with the shortest answers."""

    name = "shortest"
    Options = ShortestOptions

    def select(self, samples, scores, ctx):
        k = int(round(len(samples) * self.options.fraction))
        order = np.argsort(scores["answer_words"], kind="stable")[:k]
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
