"""Check questions: offered after an explanation, graded, and recorded in the learner model.

The item is an approved one that `learners.services.next_item` picks for the learner, or, when
the skill has none, one generated from the passage the answer cited and stored as a draft for
the instructor to approve. A generated item is a completion question made from the passage's
own words (the blank is a key term, a number with its unit first; the distractors are other
terms of the course's material), so its answer is what the material says, never something a
model made up, and it is graded exactly.

Multiple-choice responses are graded exactly. Short answers are graded by the language model
against the item's answer (see `grading_messages` and `parse_grade`) inside bounds that a small
model cannot move (`settle`): the expected answer's figures must be given, and a response very
close in meaning to it (the local embedding model), or holding all its key terms, is right; one
far from it is wrong.

Pure: no ORM. The writes (offering a check, taking a response, recording the grade through
`learners.services.record_attempt`, keyed by the check so a resend is not a second attempt) are
in `tutoring.services`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from knowledge import sentences
from learners.models import Item

MAX_RESPONSE_CHARS = 1000
GRADING_TOKENS = 48
BLANK = "_____"

_STOPWORD_TEXT = """a about above after again against all also am an and any are as at be because
    been before being below between both but by can could did do does doing down during each either
    every few for from further had has have having he her here hers him his how however i if in
    into is it its itself just least less may me might more most must my no nor not now of off
    on once one only or other our ours out over own same shall she should so some such than that
    the their them then there these they this those through to too two under until up upon us
    very was we were what when where which while who whom why will with within without would
    you your yours yes"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|\d+(?:[.,]\d+)?")
# A number and the unit after it: "25 N·m", "0.5 mm", "8 hours", "50 %", "3 bar".
_QUANTITY = re.compile(
    r"(?<![\w.])(\d+(?:[.,]\d+)?)\s?(%|°C|°F|[A-Za-z][A-Za-z·/]*(?:\s(?:per|a)\s[a-z]+)?)"
)


class CheckError(Exception):
    """A response the tutor refuses; the message is shown to the learner."""


@dataclass(frozen=True)
class Grade:
    correct: bool
    reason: str
    by: str  # "exact" (a choice), "model", "words" or "meaning" (the bounds of `settle`)


# ---------------------------------------------------------------- making items


def make_completion(text: str, other_terms: list[str]) -> tuple[str, str, list[str]] | None:
    """(the sentence with a blank, the blanked term, three distractors) from a passage, or None.

    The sentence: the passage's most informative one of 8 to 45 words (a number with its unit
    counts most). The blank: its quantity, else its longest content word not in a heading. The
    distractors: other quantities with the same unit (or the number changed), else other long
    content words of the course's material, never the term itself.
    """
    best: tuple[float, str, str] | None = None
    for sentence in sentences.split(text, prose_only=True):
        words = _WORD.findall(sentence)
        if not 8 <= len(words) <= 45:
            continue
        quantity = next(
            (match for match in _QUANTITY.finditer(sentence) if _is_unit(match.group(2))), None
        )
        if quantity is not None:
            term, score = quantity.group(0), 100.0 + len(words) / 100
        else:
            content = [w for w in words if _is_content(w) and not w[0].isupper()]
            if not content:
                continue
            term = max(content, key=lambda w: (len(w), w))
            score = len(term) + len(set(content)) / 10
        if best is None or score > best[0]:
            best = (score, sentence, term)
    if best is None:
        return None
    _, sentence, term = best
    distractors = _distractors(term, other_terms)
    if len(distractors) < 3:
        return None
    blanked = sentence.replace(term, BLANK, 1)
    return blanked, term, distractors[:3]


def _is_content(word: str) -> bool:
    return len(word) >= 5 and word.casefold() not in STOPWORDS and not word.isdigit()


def _is_unit(unit: str) -> bool:
    return unit in ("%", "°C", "°F") or (unit.casefold() not in STOPWORDS and len(unit) <= 20)


def _distractors(term: str, others: list[str]) -> list[str]:
    found: list[str] = []
    quantity = _QUANTITY.fullmatch(term)
    if quantity is not None:
        number, unit = quantity.group(1), quantity.group(2)
        value = float(number.replace(",", "."))
        for other in others:
            match = _QUANTITY.fullmatch(other)
            if match and match.group(2) == unit and match.group(1) != number:
                found.append(other)
        decimals = len(number.split(".")[1]) if "." in number else 0
        for factor in (2.0, 0.5, 3.0, 10.0, 0.1):
            candidate = f"{value * factor:.{decimals}f}"
            if float(candidate) != value:
                found.append(f"{candidate}{term[len(number) : len(term) - len(unit)]}{unit}")
    else:
        found = [
            other
            for other in others
            if _QUANTITY.fullmatch(other) is None and abs(len(other) - len(term)) <= 6
        ]
    unique: list[str] = []
    for candidate in found:
        if candidate.casefold() != term.casefold() and candidate.casefold() not in {
            u.casefold() for u in unique
        }:
            unique.append(candidate)
    # Deterministic, but not always the same first three of a course.
    return sorted(unique, key=lambda value: _digest(term + value))


def terms_of(text: str) -> list[str]:
    """What a passage offers as distractors: its quantities and its long content words."""
    terms = [match.group(0) for match in _QUANTITY.finditer(text) if _is_unit(match.group(2))]
    return terms + [w for w in _WORD.findall(text) if _is_content(w) and not w[0].isupper()]


def shuffled(values: list[str], *, key: str) -> list[str]:
    return sorted(values, key=lambda value: _digest(key + value))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- grading


def content_words(text: str) -> set[str]:
    return {
        _stem(word.casefold())
        for word in _WORD.findall(text)
        if word.casefold() not in STOPWORDS and (len(word) >= 3 or word[0].isdigit())
    }


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def grade_choice(item: Item, response: str) -> Grade:
    if not any(Item._same(choice, response) for choice in item.choices):
        raise CheckError("pick one of the choices")
    if Item._same(item.answer, response):
        return Grade(True, "That is what the course material says.", "exact")
    return Grade(False, f"The course material says: {item.answer}", "exact")


# Cosine similarity (the local embedding model) of a response to the expected answer: at or above
# CLEARLY_RIGHT it means the same, below CLEARLY_WRONG it does not; between, the model decides,
# and where it gives no verdict, FALLBACK does.
CLEARLY_RIGHT = 0.75
CLEARLY_WRONG = 0.40
FALLBACK = 0.60


def settle(answer: str, response: str, similarity: float) -> Grade | None:
    """The verdict where the words and the meaning settle it, else None (the model decides).

    A small model cannot move these bounds: a figure of the expected answer must be given; a
    response close in meaning, or holding every key term, is right; one far in meaning, or far
    and without a single key term, is wrong.
    """
    expected = content_words(answer)
    given = content_words(response)
    numbers = {word for word in expected if word[0].isdigit()}
    if numbers and not numbers <= given:
        return Grade(
            False, "Your answer does not give the figures of the expected answer.", "words"
        )
    if similarity >= CLEARLY_RIGHT:
        return Grade(
            True,
            f"It means the same as the expected answer (similarity {similarity:.2f}).",
            "meaning",
        )
    if expected and expected <= given:
        return Grade(True, "Your answer holds every key term of the expected answer.", "words")
    if similarity < CLEARLY_WRONG or (not expected & given and similarity < FALLBACK):
        return Grade(
            False,
            f"It does not say what the expected answer says (similarity {similarity:.2f}).",
            "meaning",
        )
    return None


def grading_messages(item: Item, response: str) -> list[dict[str, str]]:
    """A few-shot prompt: 'CORRECT: reason' or 'INCORRECT: reason' (small models need the
    examples to keep the format)."""
    return [
        {
            "role": "system",
            "content": (
                "You grade a student's short answer against the reference answer. The student "
                "is right when the answer means the same as the reference answer, even in other "
                "words. Reply with one line: 'CORRECT: <reason>' or 'INCORRECT: <reason>'."
            ),
        },
        {
            "role": "user",
            "content": "Reference: Water boils at 100 degrees Celsius at sea level.\n"
            "Student: At sea level it boils at 100 C.\nGrade:",
        },
        {"role": "assistant", "content": "CORRECT: the same temperature."},
        {
            "role": "user",
            "content": "Reference: Water boils at 100 degrees Celsius at sea level.\n"
            "Student: When it gets warm.\nGrade:",
        },
        {"role": "assistant", "content": "INCORRECT: it does not give the boiling point."},
        {
            "role": "user",
            "content": (
                f"Question: {item.stem}\nReference: {item.answer}\nStudent: {response}\nGrade:"
            ),
        },
    ]


_VERDICT = re.compile(r"^\W*(INCORRECT|CORRECT|WRONG|RIGHT)\b\W*(.*)", re.IGNORECASE | re.DOTALL)


def parse_grade(text: str, similarity: float) -> Grade:
    """The model's verdict and its one-line reason; the similarity decides when it gave none."""
    match = _VERDICT.match(text.strip())
    if match is None:
        return Grade(
            similarity >= FALLBACK,
            f"Graded by meaning: similarity {similarity:.2f} to the expected answer.",
            "meaning",
        )
    correct = match.group(1).upper() in ("CORRECT", "RIGHT")
    reason = " ".join(match.group(2).split()).split("\n")[0][:200].rstrip(" .") or (
        "It matches the expected answer" if correct else "It does not match the expected answer"
    )
    return Grade(correct, reason + ".", "model")
