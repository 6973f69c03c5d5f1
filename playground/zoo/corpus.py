"""The text the transformer learns from, shipped in the package."""

from __future__ import annotations

import functools
from importlib import resources


@functools.lru_cache(maxsize=None)
def corpus_text() -> str:
    return resources.files("playground").joinpath("corpus.txt").read_text(encoding="utf-8")


def corpus_vocab() -> str:
    return "".join(sorted(set(corpus_text())))


def corpus_vocab_size() -> int:
    return len(corpus_vocab())


