"""Check questions: which item is offered, how a draft is made from a passage, how responses are
graded and recorded in the learner model (the real database and embedding model; the grading
by the LLM itself is in test_it_chats_over_the_websocket.py)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from knowledge.models import Course, Skill
from learners.models import Attempt, Item
from learners.services import mastery_of, next_item
from tests.conftest import IngestFn
from tutoring import checks, services
from tutoring.models import Check, Conversation, Message

PASSAGE = (
    "# Coupling alignment\n\n"
    "Misalignment between a motor and a pump is the most common cause of early bearing "
    "failure. Tighten the coupling bolts to 45 N·m in a star pattern before the final check. "
    "A dial indicator measures the offset at the coupling rim while the shaft is turned by "
    "hand. Laser alignment tools are faster and record every reading.\n\n"
    "# Soft foot\n\nA machine foot that does not sit flat distorts the casing when its bolt is "
    "tightened. Shims under the short foot remove the distortion before alignment begins.\n"
)
WORDS_ONLY = (
    "Lubricating grease separates rolling elements from their raceways and keeps moisture "
    "and abrasive contamination away from the precision surfaces of every bearing."
)


@pytest.fixture
def skill(course: Course) -> Skill:
    return Skill.objects.create(
        course=course,
        name="Shaft Alignment",
        description="Aligns motor and pump shafts with dial indicators or laser tools.",
    )


@pytest.fixture
def answered(course: Course, learner: User, skill: Skill, ingest: IngestFn) -> Message:
    """A finished answer on the skill that cites the alignment passage."""
    document = ingest(course, "alignment.md", PASSAGE.encode())
    chunk = document.chunks.order_by("ordinal").first()
    assert chunk is not None
    conversation = Conversation.objects.create(learner=learner, course=course)
    return Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.COMPLETE,
        content="Align the shafts [1].",
        skill=skill,
        citations=[
            {
                "n": 1,
                "chunk": chunk.pk,
                "document": document.title,
                "filename": "alignment.md",
                "locator": chunk.locator,
                "text": chunk.text,
            }
        ],
    )


def _item(skill: Skill, **fields: object) -> Item:
    values: dict[str, object] = {
        "course": skill.course,
        "skill": skill,
        "stem": "What does a dial indicator measure during alignment?",
        "choices": ["The offset at the coupling rim", "The motor's speed", "Bolt torque"],
        "answer": "The offset at the coupling rim",
        "kind": Item.Kind.MULTIPLE_CHOICE,
        "status": Item.Status.APPROVED,
    }
    values.update(fields)
    item = Item(**values)
    item.full_clean()
    item.save()
    return item


def test_it_blanks_the_figure_of_a_passage_and_offers_plausible_alternatives() -> None:
    made = checks.make_completion(PASSAGE, ["30 N·m", "1200 rpm", "vibration", "45 N·m"])
    assert made is not None
    sentence, term, distractors = made
    assert term == "45 N·m"
    assert checks.BLANK in sentence and "45 N·m" not in sentence
    assert sentence.replace(checks.BLANK, term) in PASSAGE
    assert len(distractors) == 3 and term not in distractors
    assert "30 N·m" in distractors  # a figure of the material with the same unit comes first
    assert all(d.endswith("N·m") for d in distractors)


def test_it_blanks_a_key_word_when_the_passage_has_no_figure() -> None:
    made = checks.make_completion(
        WORDS_ONLY, ["lubrication", "temperature", "alignment", "contamination", "seals"]
    )
    assert made is not None
    sentence, term, distractors = made
    assert term == "contamination"  # the longest content word
    assert sentence.replace(checks.BLANK, term) == WORDS_ONLY
    assert term not in distractors and len(set(distractors)) == 3


def test_it_makes_nothing_from_a_passage_without_a_usable_sentence() -> None:
    assert checks.make_completion("Too short.", ["alpha", "beta", "gamma"]) is None
    assert checks.make_completion(WORDS_ONLY, []) is None  # no distractors to offer


def test_it_offers_an_approved_item_of_the_answers_skill(answered: Message, skill: Skill) -> None:
    item = _item(skill)
    _item(skill, status=Item.Status.DRAFT, stem="A draft nobody approved?")
    check = services.offer_check(answer=answered)
    assert check is not None and check.item == item
    # Every tab asks; there is one check per answer.
    assert services.offer_check(answer=answered) == check
    assert Check.objects.count() == 1


def test_it_generates_a_draft_from_the_cited_passage_when_no_item_is_approved(
    answered: Message, skill: Skill
) -> None:
    check = services.offer_check(answer=answered)
    assert check is not None
    item = check.item
    assert item.status == Item.Status.DRAFT
    assert item.source == Item.Source.GENERATED
    assert item.kind == Item.Kind.MULTIPLE_CHOICE and item.skill == skill
    assert item.answer in item.choices and len(item.choices) == 4
    assert "alignment.md" in item.stem
    quoted = item.stem.split("“", 1)[1].rstrip("”")
    assert quoted.replace(checks.BLANK, item.answer) in " ".join(PASSAGE.split())
    item.full_clean()  # a valid item for the instructor to approve
    # A second answer citing the same passage reuses the draft.
    again = Message.objects.create(
        conversation=answered.conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.COMPLETE,
        skill=skill,
        citations=answered.citations,
    )
    second = services.offer_check(answer=again)
    assert second is not None and second.item == item
    assert Item.objects.filter(source=Item.Source.GENERATED).count() == 1


@pytest.mark.parametrize("status", ["error", "stopped", "pending"])
def test_it_offers_nothing_after_an_unfinished_answer(
    answered: Message, skill: Skill, status: str
) -> None:
    _item(skill)
    Message.objects.filter(pk=answered.pk).update(status=status)
    answered.refresh_from_db()
    assert services.offer_check(answer=answered) is None
    answered.status = Message.Status.COMPLETE
    answered.skill = None
    assert services.offer_check(answer=answered) is None  # an answer that teaches no skill


def test_a_right_choice_is_recorded_once_and_raises_mastery(
    answered: Message, skill: Skill, learner: User
) -> None:
    _item(skill)
    check = services.offer_check(answer=answered)
    assert check is not None
    before = mastery_of(learner, skill)
    taken = services.start_check_response(
        check=check, learner=learner, response="  the offset at the coupling rim "
    )
    grade = checks.grade_choice(taken.item, taken.response)
    assert grade.correct and grade.by == "exact"
    done = services.finish_check(check=taken, grade=grade)
    assert done.status == Check.Status.GRADED and done.correct is True
    assert done.p_before == pytest.approx(before)
    assert done.p_after is not None and done.p_after > before
    assert mastery_of(learner, skill) == pytest.approx(done.p_after)
    attempt = Attempt.objects.get(learner=learner)
    assert attempt.source == Attempt.Source.CHAT and attempt.item == check.item
    assert attempt.key == f"check:{check.pk}"
    # Grading again changes nothing; answering again is refused.
    services.finish_check(check=done, grade=grade)
    assert Attempt.objects.count() == 1
    with pytest.raises(checks.CheckError, match="answered already"):
        services.start_check_response(check=done, learner=learner, response="Bolt torque")


def test_a_wrong_choice_lowers_mastery_and_shows_the_answer(
    answered: Message, skill: Skill, learner: User
) -> None:
    _item(skill)
    check = services.offer_check(answer=answered)
    assert check is not None
    before = mastery_of(learner, skill)
    taken = services.start_check_response(check=check, learner=learner, response="Bolt torque")
    grade = checks.grade_choice(taken.item, taken.response)
    assert not grade.correct and "The offset at the coupling rim" in grade.reason
    done = services.finish_check(check=taken, grade=grade)
    assert done.p_after is not None and done.p_after < before
    assert services.check_json(done)["answer"] == "The offset at the coupling rim"


def test_it_refuses_bad_responses_and_leaves_the_check_open(
    answered: Message, skill: Skill, learner: User, outsider: User
) -> None:
    _item(skill)
    check = services.offer_check(answer=answered)
    assert check is not None
    for response, error in [
        ("", "write an answer"),
        ("   ", "write an answer"),
        ("A choice that is not offered", "pick one of the choices"),
        ("x" * 2000, "longer than"),
    ]:
        with pytest.raises(checks.CheckError, match=error):
            services.start_check_response(check=check, learner=learner, response=response)
    with pytest.raises(checks.CheckError, match="another learner"):
        services.start_check_response(check=check, learner=outsider, response="Bolt torque")
    check.refresh_from_db()
    assert check.status == Check.Status.OFFERED and not check.response
    assert not Attempt.objects.exists()
    assert services.check_json(check)["answer"] is None  # not given away before the response


TORQUE = "Tighten the coupling bolts to 45 N·m in a star pattern."


def test_the_bounds_settle_only_the_clear_cases() -> None:
    # A figure of the expected answer must be given, however close the rest is.
    wrong_figure = checks.settle(TORQUE, "Tighten the coupling bolts to 30 N·m, star pattern.", 0.9)
    assert wrong_figure is not None and not wrong_figure.correct
    assert "figures" in wrong_figure.reason
    every_term = checks.settle(
        TORQUE, "In a star pattern you tighten coupling bolts to 45 N·m", 0.5
    )
    assert every_term is not None and every_term.correct and every_term.by == "words"
    close = checks.settle(TORQUE, "Bolts to 45 N·m, crosswise.", checks.CLEARLY_RIGHT)
    assert close is not None and close.correct and close.by == "meaning"
    far = checks.settle(TORQUE, "45 N·m, I would ask my supervisor.", checks.CLEARLY_WRONG - 0.01)
    assert far is not None and not far.correct
    nothing_shared = checks.settle("Shim the short foot.", "Put thin plates under it.", 0.5)
    assert nothing_shared is not None and not nothing_shared.correct
    assert checks.settle(TORQUE, "45 N·m on the coupling bolts", 0.6) is None  # the model decides


@pytest.mark.parametrize(
    ("response", "correct"),
    [
        ("Because the impeller cannot pump air, you fill the casing with liquid.", True),
        ("Because it gets too hot.", False),
        ("To make it spin faster.", False),
        ("Fill the casing with liquid.", None),  # half of it: the model decides
    ],
)
def test_meaning_is_judged_by_the_local_embedding_model(
    answered: Message, skill: Skill, learner: User, response: str, correct: bool | None
) -> None:
    _item(
        skill,
        kind=Item.Kind.SHORT_ANSWER,
        choices=[],
        answer="The impeller cannot move air, so the casing is filled with liquid first.",
    )
    check = services.offer_check(answer=answered)
    assert check is not None
    taken = services.start_check_response(check=check, learner=learner, response=response)
    settled, similarity = services.settle_short_answer(taken)
    assert 0.0 <= similarity <= 1.0
    assert (settled.correct if settled is not None else None) == correct


@pytest.mark.parametrize(
    ("text", "similarity", "correct", "by"),
    [
        ("CORRECT: it names the torque and the pattern", 0.5, True, "model"),
        ("Incorrect - the torque is missing.", 0.7, False, "model"),
        ("  **Correct.** Same meaning.", 0.5, True, "model"),
        ("The student wrote about bolts.", 0.65, True, "meaning"),  # no verdict
        ("", 0.5, False, "meaning"),  # no answer from the model at all
    ],
)
def test_it_reads_the_models_verdict(text: str, similarity: float, correct: bool, by: str) -> None:
    grade = checks.parse_grade(text, similarity)
    assert (grade.correct, grade.by) == (correct, by)
    assert grade.reason and len(grade.reason) <= 201


def test_the_grading_prompt_holds_the_question_the_reference_and_the_response(
    skill: Skill,
) -> None:
    item = _item(skill, kind=Item.Kind.SHORT_ANSWER, choices=[], answer="Shim the short foot.")
    messages = checks.grading_messages(item, "put shims under it")
    assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
    assert "CORRECT" in messages[0]["content"] and "INCORRECT" in messages[0]["content"]
    assert item.stem in messages[-1]["content"]
    assert "Shim the short foot." in messages[-1]["content"]
    assert "put shims under it" in messages[-1]["content"]


def test_the_demo_course_has_approved_check_questions_for_every_skill(
    demo_course: Course, learner: User
) -> None:
    from django.core.management import call_command

    before = Item.objects.filter(course=demo_course).count()
    call_command("load_demo", verbosity=0)  # idempotent: refreshed, not duplicated
    assert Item.objects.filter(course=demo_course).count() == before
    for skill in demo_course.skills.all():
        items = Item.objects.filter(skill=skill, status=Item.Status.APPROVED)
        assert items.filter(kind=Item.Kind.MULTIPLE_CHOICE).count() >= 3, skill.name
        assert items.filter(kind=Item.Kind.SHORT_ANSWER).exists(), skill.name
        for item in items:
            item.full_clean()
        chosen = next_item(learner=learner, skill=skill)
        assert chosen is not None and chosen.skill == skill
