"""The support check: is each sentence the model wrote backed by the retrieved passages?

A sentence is scored against the passages' own sentences with three signals:

- meaning: the cosine similarity of its embedding (the local embedding model) to the closest
  passage sentence;
- words: the share of its content words that occur in the WORDS_FROM passage sentences closest
  to it in meaning (not anywhere in the passages: a sentence stitched from words of unrelated
  passage sentences is not backed by any of them);
- figures: every number with its unit (a torque, a pressure, an interval) must appear in a
  passage, and the closest passage sentence must not say the opposite (one of the two negated,
  the other not).

score = MEANING_WEIGHT * meaning + (1 - MEANING_WEIGHT) * words; a sentence is supported when
the score reaches THRESHOLD, no figure is missing and no negation is flipped.

Pure: the caller passes the embedding function (`knowledge.embedding.embed` in the app), so the
chat, the API and `manage.py support_check` run exactly the same check.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from knowledge import sentences as passage_sentences
from tutoring.checks import content_words

Embed = Callable[[Sequence[str]], np.ndarray]

# Chosen on the even-numbered half of bench/grounding_set.jsonl (bench/grounding.py).
MEANING_WEIGHT = 0.55
THRESHOLD = 0.67
WORDS_FROM = 3

_CITATION = re.compile(r"\s*\[\d{1,2}(?:\s*,\s*\d{1,2})*\]")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)\s?(%|°\s?[CF]|[A-Za-z][A-Za-z·/]*)?")
_NEGATION = re.compile(
    r"\b(not|never|no|none|nobody|nothing|neither|nor|cannot|without)\b|n't\b", re.IGNORECASE
)
# Words after a number that are not its unit.
_NOT_UNIT_TEXT = """a an and or the of to in on at by for with from is are was were be as it its
    this that times"""
_NOT_UNITS = frozenset(_NOT_UNIT_TEXT.split())


@dataclass(frozen=True)
class Judged:
    sentence: str
    supported: bool
    score: float
    meaning: float
    words: float
    missing_figures: list[str] = field(default_factory=list)
    negation_flipped: bool = False
    closest: str = ""  # the passage sentence it is closest to

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def sentences(text: str) -> list[str]:
    """The sentences of an answer or a passage, split as the stored passage sentences are."""
    return passage_sentences.split(text)


def figures(text: str) -> set[str]:
    """Numbers with their units, normalised: '25 N·m' -> '25 n·m', '8 hours' -> '8 hour'."""
    found = set()
    for match in _NUMBER.finditer(text):
        number = match.group(1).replace(",", ".")
        unit = (match.group(2) or "").replace(" ", "").casefold()
        if unit in _NOT_UNITS:
            unit = ""
        if unit.endswith("s") and len(unit) > 3:
            unit = unit[:-1]
        found.add(f"{number} {unit}".strip())
    return found


def _negated(text: str) -> bool:
    return bool(_NEGATION.search(text))


def check(answer: str, passages: Sequence[str], embed: Embed) -> list[Judged]:
    """Judge every sentence of `answer` against `passages`."""
    said = [s for s in sentences(answer) if content_words(_CITATION.sub("", s))]
    if not said:
        return []
    source = [s for passage in passages for s in sentences(passage)]
    if not source:
        return [Judged(s, False, 0.0, 0.0, 0.0) for s in said]
    plain = [_CITATION.sub("", s) for s in said]
    vectors = embed([*plain, *source])
    mine, theirs = vectors[: len(plain)], vectors[len(plain) :]
    similarity = mine @ theirs.T
    source_words = [content_words(s) for s in source]
    source_figures = set().union(*(figures(s) for s in source))
    source_numbers = {value.split(" ")[0] for value in source_figures}
    judged = []
    for row, (sentence, text) in enumerate(zip(said, plain, strict=True)):
        ranked = np.argsort(-similarity[row], kind="stable")
        best = int(ranked[0])
        meaning = float(max(0.0, similarity[row, best]))
        words = content_words(text)
        near = set().union(*(source_words[int(i)] for i in ranked[:WORDS_FROM]))
        overlap = len(words & near) / len(words) if words else 0.0
        missing = sorted(
            value
            for value in figures(text)
            if value not in source_figures
            and not (" " not in value and value in source_numbers)  # a bare number: any unit
        )
        flipped = _negated(text) != _negated(source[best]) and meaning >= 0.5
        score = MEANING_WEIGHT * meaning + (1 - MEANING_WEIGHT) * overlap
        judged.append(
            Judged(
                sentence=sentence,
                supported=score >= THRESHOLD and not missing and not flipped,
                score=round(score, 4),
                meaning=round(meaning, 4),
                words=round(overlap, 4),
                missing_figures=missing,
                negation_flipped=flipped,
                closest=source[best],
            )
        )
    return judged


def check_sentences(said: Sequence[str], passages: Sequence[str], embed: Embed) -> list[Judged]:
    """`check` for sentences already split (the inference worker's, as they complete)."""
    return check("\n".join(said), passages, embed)


EXTRACT_SENTENCES = 3
EXTRACT_FLOOR = 0.35  # a passage sentence less close to the question than this is not quoted


def extract(
    question: str, passages: Sequence[tuple[int, str]], embed: Embed, k: int = EXTRACT_SENTENCES
) -> list[dict[str, Any]]:
    """The passage sentences (verbatim, with their passage's number) that best answer the
    question: "From your course material", shown before the model's explanation."""
    candidates = [
        (number, sentence)
        for number, text in passages
        for sentence in sentences(text)
        if len(content_words(sentence)) >= 3
    ]
    if not question.strip() or not candidates:
        return []
    vectors = embed([question, *(sentence for _, sentence in candidates)])
    closeness = vectors[1:] @ vectors[0]
    ranked = sorted(range(len(candidates)), key=lambda i: -float(closeness[i]))
    chosen = [i for i in ranked[:k] if float(closeness[i]) >= EXTRACT_FLOOR]
    return [
        {"n": candidates[i][0], "text": candidates[i][1], "score": round(float(closeness[i]), 4)}
        for i in chosen
    ]


def read_passages(text: str) -> list[str]:
    """Passages separated by blank lines (the format of `manage.py support_check`)."""
    return [block.strip() for block in re.split(r"\n\s*\n", text) if block.strip()]
