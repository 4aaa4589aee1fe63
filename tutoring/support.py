"""The support check: is each sentence the model wrote backed by the retrieved passages?

A sentence is scored against the passages' own sentences with two signals:

- meaning: the cosine similarity of its embedding (the local embedding model) to the closest
  passage sentence;
- words: the share of its content words that occur in the WORDS_FROM passage sentences closest
  to it in meaning (not anywhere in the passages: a sentence stitched from words of unrelated
  passage sentences is not backed by any of them);

score = MEANING_WEIGHT * meaning + (1 - MEANING_WEIGHT) * words. It is supported when the score
reaches THRESHOLD and none of these holds:

- missing figures: a number with its unit (a torque, a pressure, an interval; in digits or
  words) in no passage, nor in the learner's question, nor worked out from two known numbers of
  the same sentence;
- a flipped negation: the clause of the closest passage sentence that the sentence speaks of is
  negated and the sentence isn't, or the other way round;
- an opposed word: it uses the antonym (WordNet 3.0, `antonyms.txt`) of a word of the closest
  passage sentence instead of that word;
- an overstatement: an exclusive word ("only", "always", "on its own") the closest passage
  sentence doesn't use.

A bare "yes" or "no" is judged as the answer to the learner's question, by the polarity of the
passage sentence closest to the question.

Pure: the caller passes the embedding function (`knowledge.embedding.embed` in the app), so the
chat, the API and `manage.py support_check` run exactly the same check. What it cannot see (a
term swapped for another term of the same passages, an order reversed) and how often: see
bench/README.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence, Set
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from knowledge import sentences as passage_sentences
from tutoring.checks import content_words

Embed = Callable[[Sequence[str]], np.ndarray]

ANTONYMS = Path(__file__).resolve().parent / "antonyms.txt"

# Chosen on the development set, bench/grounding_set.jsonl (bench/grounding.py).
MEANING_WEIGHT = 0.5
THRESHOLD = 0.67
WORDS_FROM = 3
# A negation or an antonym counts only against a passage sentence this close in meaning: one on
# another subject says nothing about the sentence.
SAME_SUBJECT = 0.5

_CITATION = re.compile(r"\s*\[\d{1,2}(?:\s*,\s*\d{1,2})*\]")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)*)\s?(%|°\s?[CF]|[A-Za-z][A-Za-z·/]*)?")
# "30 to 50 percent": the unit belongs to both numbers.
_RANGE = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)*)\s?(?:to|-|\u2013|or|and)\s?(?=\d)")
_NEGATION_WORDS = "not never no none nobody nothing neither nor cannot without"
_NEGATION = re.compile(rf"\b({'|'.join(_NEGATION_WORDS.split())})\b|n't\b", re.IGNORECASE)
# Where a sentence's clauses part: a negation counts in its own clause only.
_CLAUSE = re.compile(
    r"[,;:()]|\s[-\u2013]\s|\b(?:but|while|whereas|although|though|because|unless|until|who|which)\b",
    re.IGNORECASE,
)
# Words that make a claim exclusive or absolute: one the closest passage sentence doesn't use
# overstates it ("Safety glasses are only needed when grinding").
_EXCLUSIVE = frozenset(
    ["only", "alone", "solely", "sufficient", "enough", "always", "entirely", "own"]
)
_TOKEN = re.compile(r"[a-z]+")
# "The answer is no.", "Yes!": a verdict on the question, with no claim of its own.
_VERDICT = re.compile(r"^\W*(?:the\s+answer\s+is\s+)?(yes|no)\W*$", re.IGNORECASE)
# "The answer to this question is:": a lead-in to what follows, no claim of its own.
_LEAD_IN = re.compile(r":\s*$")
# Words after a number that are not its unit.
_NOT_UNIT_TEXT = """a an and or the of to in on at by for with from is are was were be as it its
    this that x"""
_NOT_UNITS = frozenset(_NOT_UNIT_TEXT.split())
_NUMBER_WORD_TEXT = """zero - two three four five six seven eight nine ten eleven twelve thirteen
    fourteen fifteen sixteen seventeen eighteen nineteen twenty"""
# Number words, so "ten years" is checked as "10 years" ("one" is left: mostly not a number).
_NUMBER_WORDS = {
    word: str(value) for value, word in enumerate(_NUMBER_WORD_TEXT.split()) if word != "-"
} | {"thirty": "30", "forty": "40", "fifty": "50", "hundred": "100", "thousand": "1000"}
_NUMBER_WORD = re.compile(rf"\b({'|'.join(_NUMBER_WORDS)})\b", re.IGNORECASE)
# Units of measure, normalised as `_unit` gives them: a number before one must appear with it.
# (Any word the passages put after a number counts as a unit too.)
_UNIT_TEXT = """% c f k mm cm m km in ft g kg t lb n nm n·m kn pa kpa mpa bar psi v kv mv a ma w kw
    mw hz rpm db db(a) ppm lux cal/cm2 j kj l ml second sec minute min hour hr day week month
    year time cycle degree volt amp watt meter metre litre liter"""
UNITS = frozenset(_UNIT_TEXT.split())
_UNIT_NAMES = {"degree": "c", "°c": "c", "deg": "c", "°f": "f", "percent": "%", "per cent": "%"}


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
    opposed: list[str] = field(default_factory=list)  # "last/first": its word, the passage's
    overstated: list[str] = field(default_factory=list)  # "only": exclusive words it adds

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def sentences(text: str) -> list[str]:
    """The sentences of an answer or a passage, split as the stored passage sentences are."""
    return passage_sentences.split(text)


def _numbers_in_digits(text: str) -> str:
    return _NUMBER_WORD.sub(lambda match: _NUMBER_WORDS[match.group(1).casefold()], text)


def _unit(raw: str | None) -> str:
    unit = (raw or "").replace(" ", "").casefold()
    if unit in _NOT_UNITS:
        return ""
    if unit.endswith("s") and len(unit) > 3:
        unit = unit[:-1]
    return _UNIT_NAMES.get(unit, unit)


def _figures(text: str) -> list[tuple[str, str]]:
    """(number, unit) pairs of a text, normalised; unit '' where none follows. In a range
    ("30 to 50 percent") the first number takes the second's unit."""
    text = _numbers_in_digits(text)
    found = [
        (match.group(1).replace(",", ""), _unit(match.group(2))) for match in _NUMBER.finditer(text)
    ]
    for match in _RANGE.finditer(text):
        second = _NUMBER.match(text, match.end())
        unit = _unit(second.group(2)) if second is not None else ""
        if unit:
            found.append((match.group(1).replace(",", ""), unit))
    return found


def figures(text: str) -> set[str]:
    """Numbers with their units, normalised: '25 N·m' -> '25 n·m', 'ten hours' -> '10 hour'."""
    return {f"{number} {unit}".strip() for number, unit in _figures(text)}


def _float(number: str) -> float | None:
    """The value of a figure's number (thousands commas are gone already, `_figures`), or None
    for one that is no number, such as a version "5.1.2"."""
    try:
        return float(number)
    except ValueError:
        return None


def _derived(number: str, others: Sequence[str]) -> bool:
    """Whether `number` is the sum, difference, product or quotient of two other numbers of the
    same sentence (the working shown: "a likelihood of 4 and a severity of 4 give 16")."""
    value = _float(number)
    known = [found for found in map(_float, others) if found is not None]
    if value is None:
        return False
    for i, a in enumerate(known):
        for b in known[i + 1 :]:
            results = (a + b, abs(a - b), a * b, a / b if b else None, b / a if a else None)
            if any(r is not None and abs(r - value) < 1e-9 for r in results):
                return True
    return False


def _missing(text: str, known: set[str], units: Set[str]) -> list[str]:
    """The figures of `text` that are not known: a number with a unit the source uses after
    numbers must appear with that unit; any other number must appear at all, or be worked out
    from two known numbers of the same sentence."""
    numbers = {value.split(" ")[0] for value in known}
    found = _figures(text)
    unknown = []
    for number, unit in found:
        if unit in units:
            if f"{number} {unit}" not in known:
                unknown.append((number, unit))
        elif number not in numbers:
            unknown.append((number, ""))
    missing = []
    for number, unit in unknown:
        operands = [other for other, _ in found if other != number and other in numbers]
        if not _derived(number, operands):
            missing.append(f"{number} {unit}".strip())
    return sorted(set(missing))


def _negated(text: str) -> bool:
    return bool(_NEGATION.search(text))


_NEGATION_CONTENT = content_words(_NEGATION_WORDS)  # "nothing", "cannot": not a clause's subject


@lru_cache(maxsize=8192)
def _clauses(text: str) -> tuple[tuple[bool, frozenset[str]], ...]:
    """(negated, content words) of each clause (passage sentences come again and again)."""
    parts = [clause for clause in _CLAUSE.split(text) if clause and clause.strip()] or [text]
    return tuple(
        (_negated(clause), frozenset(content_words(clause) - _NEGATION_CONTENT)) for clause in parts
    )


@lru_cache(maxsize=8192)
def _facts(sentence: str) -> tuple[frozenset[str], tuple[tuple[str, str], ...]]:
    """A passage sentence's content words and figures, worked out once."""
    return frozenset(content_words(sentence)), tuple(_figures(sentence))


def _negated_where_shared(text: str, other: Set[str]) -> bool:
    """Whether a clause of `text` that the other sentence speaks of is negated: the clause
    sharing the most content words with it, and any clause more than half of whose content
    words it shares. A negation elsewhere is about something the other sentence doesn't say."""
    clauses = _clauses(text)
    shared = [len(words & other) for _, words in clauses]
    most = max(shared)
    return any(
        negated
        for (negated, words), n in zip(clauses, shared, strict=True)
        if words and (n == most or 2 * n > len(words))
    )


@lru_cache(maxsize=1)
def antonyms() -> dict[str, frozenset[str]]:
    """word -> its antonyms (stemmed as `content_words` gives them), from WordNet 3.0."""
    pairs: dict[str, set[str]] = {}
    for line in ANTONYMS.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            a, b = line.split()
            pairs.setdefault(a, set()).add(b)
            pairs.setdefault(b, set()).add(a)
    return {word: frozenset(found) for word, found in pairs.items()}


def _opposed(words: Set[str], theirs: Set[str]) -> list[str]:
    """'mine/theirs' for each word of a sentence whose antonym the passage sentence uses instead
    (neither sentence using both)."""
    table = antonyms()
    return sorted(
        f"{mine}/{other}"
        for mine in words - theirs
        for other in table.get(mine, ())
        if other in theirs and other not in words
    )


def _overstated(text: str, theirs: str) -> list[str]:
    """The exclusive words ("only", "always", "on its own") of a sentence that the passage
    sentence it follows doesn't use."""
    mine = set(_TOKEN.findall(text.casefold())) & _EXCLUSIVE
    return sorted(mine - set(_TOKEN.findall(theirs.casefold())))


def _verdict(
    sentence: str,
    said: str,
    question: str,
    source: Sequence[str],
    vectors: np.ndarray,
    embed: Embed,
) -> Judged:
    """A bare "yes" or "no" (`said`), judged against the passage sentence closest to the
    question: "no" is supported where that sentence says not or never, "yes" where it doesn't."""
    asked = embed([question])[0]
    closeness = vectors @ asked
    best = int(np.argmax(closeness))
    meaning = float(max(0.0, closeness[best]))
    says_no = _negated(source[best])
    agrees = (said.casefold() == "no") == says_no
    return Judged(
        sentence=sentence,
        supported=agrees,
        score=round(meaning, 4),
        meaning=round(meaning, 4),
        words=0.0,
        negation_flipped=not agrees,
        closest=source[best],
    )


def check(answer: str, passages: Sequence[str], embed: Embed, question: str = "") -> list[Judged]:
    """Judge every sentence of `answer` against `passages` (not a lead-in ending in a colon,
    nor one without a content word). `question`, where given, is the learner's: its figures
    count as known, and a bare "yes" or "no" is judged as the answer to it."""
    # (the sentence, the sentence without its citations)
    cited = [(s, _CITATION.sub("", s)) for s in sentences(answer) if not _LEAD_IN.search(s)]
    said = [
        (s, text) for s, text in cited if content_words(text) or (question and _VERDICT.match(text))
    ]
    if not said:
        return []
    source = [s for passage in passages for s in sentences(passage)]
    if not source:
        return [Judged(s, False, 0.0, 0.0, 0.0) for s, _ in said]
    plain = [text for _, text in said]
    vectors = embed([*plain, *source])
    mine, theirs = vectors[: len(plain)], vectors[len(plain) :]
    similarity = mine @ theirs.T
    facts = [_facts(s) for s in source]
    source_words = [words for words, _ in facts]
    given = [pair for _, found in facts for pair in found] + _figures(question)
    known = {f"{number} {unit}".strip() for number, unit in given}
    units = UNITS | {unit for _, found in facts for _, unit in found if unit}
    judged = []
    for row, (sentence, text) in enumerate(said):
        verdict = _VERDICT.match(text) if question else None
        if verdict is not None:
            judged.append(_verdict(sentence, verdict.group(1), question, source, theirs, embed))
            continue
        ranked = np.argsort(-similarity[row], kind="stable")
        best = int(ranked[0])
        meaning = float(max(0.0, similarity[row, best]))
        words = content_words(text)
        near = set().union(*(source_words[int(i)] for i in ranked[:WORDS_FROM]))
        overlap = len(words & near) / len(words) if words else 0.0
        missing = _missing(text, known, units)
        same_subject = meaning >= SAME_SUBJECT
        flipped = same_subject and _negated_where_shared(
            text, source_words[best]
        ) != _negated_where_shared(source[best], words)
        opposed = _opposed(words, source_words[best]) if same_subject else []
        overstated = _overstated(text, source[best]) if same_subject else []
        score = MEANING_WEIGHT * meaning + (1 - MEANING_WEIGHT) * overlap
        judged.append(
            Judged(
                sentence=sentence,
                supported=score >= THRESHOLD and not (missing or flipped or opposed or overstated),
                score=round(score, 4),
                meaning=round(meaning, 4),
                words=round(overlap, 4),
                missing_figures=missing,
                negation_flipped=flipped,
                closest=source[best],
                opposed=opposed,
                overstated=overstated,
            )
        )
    return judged


def check_sentences(
    said: Sequence[str], passages: Sequence[str], embed: Embed, question: str = ""
) -> list[Judged]:
    """`check` for sentences already split (the inference worker's, as they complete)."""
    return check("\n".join(said), passages, embed, question)


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
