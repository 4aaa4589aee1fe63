"""The support check on hand-made cases, with the real embedding model: what the course
material says is told apart from what it doesn't."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from knowledge import embedding
from tutoring import support

PASSAGES = [
    "Every technician who works on the machine applies their own padlock to the isolator. "
    "A lock is removed only by the person who applied it. Never remove another technician's "
    "lock, even when they have gone home.",
    "Tighten the coupling bolts to 45 N·m in a star pattern. Check the alignment again after "
    "8 hours of running.",
    "A centrifugal pump must be primed: its casing is filled with liquid before start-up, "
    "because the impeller cannot move air.",
]


def _judge(sentence: str) -> support.Judged:
    judged = support.check(sentence, PASSAGES, embedding.embed)
    assert len(judged) == 1
    return judged[0]


@pytest.mark.parametrize(
    ("sentence", "supported", "why"),
    [
        # copied from a passage, with its citation
        ("Every technician who works on the machine applies their own padlock [1].", True, ""),
        # a faithful paraphrase
        (
            "The pump casing has to be full of liquid before you start it, since the impeller "
            "can't move air.",
            True,
            "",
        ),
        ("Bolts on the coupling are tightened crosswise to 45 N·m.", True, ""),
        # a contradicted statement (the passage says never)
        ("Remove the lock of a colleague who went home.", False, "negation"),
        # an invented number
        ("Tighten the coupling bolts to 60 N·m.", False, "figure"),
        ("Check the alignment again after 24 hours of running.", False, "figure"),
        # unrelated claims
        ("Grease the bearings every week with lithium grease.", False, ""),
        ("The supervisor can cut off a lock at any time.", False, ""),
    ],
)
def test_it_judges_each_kind_of_sentence(sentence: str, supported: bool, why: str) -> None:
    judged = _judge(sentence)
    assert judged.supported is supported, judged
    if why == "negation":
        assert judged.negation_flipped
    if why == "figure":
        assert judged.missing_figures
    if supported:
        assert judged.score >= support.THRESHOLD


def test_it_splits_an_answer_into_sentences_and_skips_empty_ones() -> None:
    answer = (
        "The answer to your question is:\n"  # a lead-in, not a claim
        "**Priming.** The casing is filled with liquid before start-up [3].\n\n"
        "- Tighten the coupling bolts to 45 N·m.\n1. Then pumps fly to the moon.\n[2]"
    )
    judged = support.check(answer, PASSAGES, embedding.embed)
    assert [j.sentence for j in judged] == [
        "Priming.",
        "The casing is filled with liquid before start-up [3].",
        "Tighten the coupling bolts to 45 N·m.",
        "Then pumps fly to the moon.",
    ]
    assert [j.supported for j in judged][1:] == [True, True, False]
    assert support.check("", PASSAGES, embedding.embed) == []
    assert not support.check("Pumps move liquid.", [], embedding.embed)[0].supported


def test_a_figure_that_is_no_number_is_missing_rather_than_a_failure() -> None:
    # "5.1.2" reads as one figure; it is not a value to do arithmetic with.
    judged = support.check(
        "Use version 5.1.2 with 3 bolts and 4 nuts.", ["Use 3 bolts and 4 nuts."], embedding.embed
    )
    assert judged[0].missing_figures == ["5.1.2"]
    assert not judged[0].supported


def test_figures_keep_their_units() -> None:
    assert support.figures("Tighten to 45 N·m, then wait 8 hours at 3.5 bar or 50 %.") == {
        "45 n·m",
        "8 hour",
        "3.5 bar",
        "50 %",
    }
    assert support.figures("Step 2 of the 4 steps") == {"2", "4 step"}


def _run_command(tmp_path: Path, answer: str, **options: str) -> list[dict[str, Any]]:
    """`manage.py support_check` on PASSAGES and `answer`: its JSON lines."""
    passages = tmp_path / "passages.txt"
    passages.write_text("\n\n".join(PASSAGES))
    answer_file = tmp_path / "answer.txt"
    answer_file.write_text(answer)
    out = StringIO()
    call_command("support_check", str(passages), str(answer_file), stdout=out, **options)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_the_command_prints_one_json_line_per_sentence(tmp_path: Path) -> None:
    answer = "Tighten the coupling bolts to 45 N·m. Tighten them to 90 N·m."
    lines = _run_command(tmp_path, answer)
    assert [(line["sentence"], line["supported"]) for line in lines] == [
        ("Tighten the coupling bolts to 45 N·m.", True),
        ("Tighten them to 90 N·m.", False),
    ]
    assert all(0.0 <= line["score"] <= 1.0 for line in lines)
    # The command runs exactly the chat's check.
    expected = support.check(answer, PASSAGES, embedding.embed)
    assert [line["score"] for line in lines] == [j.score for j in expected]


def test_the_command_refuses_unreadable_or_empty_input(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    answer = tmp_path / "answer.txt"
    answer.write_text("Anything.")
    with pytest.raises(CommandError, match="no passage"):
        call_command("support_check", str(empty), str(answer))
    with pytest.raises(CommandError, match="cannot read"):
        call_command("support_check", str(tmp_path / "missing.txt"), str(answer))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CommandError, match="cannot read"):
        call_command("support_check", str(binary), str(answer))


def test_the_extract_quotes_the_passage_sentences_that_answer_the_question() -> None:
    numbered = list(enumerate(PASSAGES, start=1))
    quoted = support.extract("Why must a centrifugal pump be primed?", numbered, embedding.embed)
    assert 1 <= len(quoted) <= support.EXTRACT_SENTENCES
    best = quoted[0]
    assert best["n"] == 3 and "primed" in best["text"]
    for quote in quoted:
        assert quote["text"] in PASSAGES[quote["n"] - 1]  # verbatim, with its citation
    scores = [quote["score"] for quote in quoted]
    assert scores == sorted(scores, reverse=True)
    # Nothing close enough: nothing quoted.
    assert support.extract("What is the capital of Peru?", numbered, embedding.embed) == []
    assert support.extract("Why prime a pump?", [], embedding.embed) == []


# ---------------------------------------------------------------- reading claims closely

CLOSE_READING = [
    "Personal locks are red, carry the owner's name, and are used for nothing else.",
    "Halve the regreasing interval for every 15 C that the bearing runs above 70 C.",
    "For medium machines on rigid foundations, the vibration limit is 2.8 mm/s.",
    "Wear safety glasses when grinding and when cutting.",
]
LOCK_QUESTION = "My colleague went home with his lock still on the isolator. Can I take it off?"


def _read(sentence: str, question: str = "") -> support.Judged:
    judged = support.check(sentence, PASSAGES + CLOSE_READING, embedding.embed, question)
    assert len(judged) == 1
    return judged[0]


@pytest.mark.parametrize(("verdict", "supported"), [("The answer is no.", True), ("No.", True)])
def test_a_bare_no_is_judged_as_the_answer_to_the_question(verdict: str, supported: bool) -> None:
    assert _read(verdict, LOCK_QUESTION).supported is supported


def test_a_bare_yes_against_a_never_is_marked_and_a_verdict_without_its_question_too() -> None:
    wrong = _read("Yes.", LOCK_QUESTION)
    assert not wrong.supported
    assert wrong.negation_flipped
    assert not _read("The answer is no.").supported  # nothing to be the answer to


def test_numbers_in_words_are_checked_like_digits() -> None:
    assert _read("Check the alignment again after eight hours of running.").supported
    wrong = _read("Check the alignment again after twelve hours of running.")
    assert not wrong.supported
    assert wrong.missing_figures == ["12 hour"]


def test_the_learners_figures_and_working_shown_from_them_are_not_invented() -> None:
    question = "My bearing runs at 100 C. How much more often should I regrease it?"
    worked = "At 100 C the bearing runs 30 C above 70 C, so halve the interval twice."
    assert _read(worked, question).missing_figures == []  # 100 asked, 30 = 100 - 70
    assert _read(worked).missing_figures == ["100 c", "30 c"]  # without the question
    assert _read(worked.replace("30 C", "40 C"), question).missing_figures == ["40 c"]


def test_a_negation_counts_only_in_the_clause_the_sentence_speaks_of() -> None:
    # The passage's "nothing else" is about another clause than this copy of its first part.
    copied = _read("Personal locks are red and carry the owner's name.")
    assert copied.supported
    assert not copied.negation_flipped


def test_an_antonym_of_the_passages_word_is_a_contradiction() -> None:
    wrong = _read("For medium machines on flexible foundations, the vibration limit is 2.8 mm/s.")
    assert not wrong.supported
    assert wrong.opposed == ["flexible/rigid"]
    assert support.antonyms()["rigid"] >= {"flexible"}


def test_an_only_the_passage_does_not_say_overstates_it() -> None:
    wrong = _read("Safety glasses are only needed when grinding.")
    assert not wrong.supported
    assert wrong.overstated == ["only"]
    assert _read("Safety glasses are needed when grinding.").supported


def test_the_command_takes_the_question(tmp_path: Path) -> None:
    lines = _run_command(tmp_path, "No. Remove the lock yourself.", question=LOCK_QUESTION)
    assert [(line["sentence"], line["supported"]) for line in lines] == [
        ("No.", True),
        ("Remove the lock yourself.", False),
    ]
