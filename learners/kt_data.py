"""Knowledge-tracing data: reading answer logs, and scoring BKT one step ahead.

Pure Python and numpy, no ORM: `manage.py kt_evaluate` and `bench/bkt.py` use it.

## Formats

Both hold answers (a student, a skill, correct or not) in time order per student.

`dkt`, the format of the Deep Knowledge Tracing data sets: three lines per student,

    3
    12,7,12
    1,0,1

the number of answers; the skill of each answer, comma separated; 1 (correct) or 0 for each
answer, comma separated. A trailing comma and blank lines between students are allowed.
Students have no names: the n-th student of the file (from 0) is called "n".

`csv`: a header row naming the columns `student`, `skill` and `correct` (in any order;
other columns are ignored), then one row per answer; `correct` is 1 or 0, student and skill
are non-empty strings. Rows are in time order within each student; students may interleave.

    student,skill,correct
    ann,fractions,0
    bob,fractions,1
    ann,fractions,1

A malformed line raises `DataFormatError`, which names the file and the line, and nothing
is returned.

## One-step-ahead evaluation

`evaluate` fits one BKT model per skill on the training answers, then walks through the
test answers in file order exactly as the live system does: each (student, skill) starts at
the skill's p(L0); each answer is first predicted (`bkt.predict_correct_logit`) and then
folded into the learner's state (`bkt.update_logit`). A skill the training data never saw
is predicted with the default `BKTParams()` but not scored (pyBKT leaves such answers out
too). AUC and RMSE are over the scored answers.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from learners import bkt

Format = Literal["dkt", "csv"]
FORMATS: tuple[Format, ...] = ("dkt", "csv")
CSV_COLUMNS = ("student", "skill", "correct")
PREDICTION_COLUMNS = ("student", "skill", "index", "correct", "p")


class DataFormatError(ValueError):
    """A line of an answer file that does not follow its format."""

    def __init__(self, path: str | Path, line: int, message: str) -> None:
        super().__init__(f"{path}, line {line}: {message}")
        self.path = str(path)
        self.line = line


@dataclass(frozen=True, slots=True)
class Responses:
    """Answers in file order, as parallel columns."""

    student: list[str]
    skill: list[str]
    correct: npt.NDArray[np.int8]

    def __len__(self) -> int:
        return len(self.student)

    @property
    def n_students(self) -> int:
        return len(set(self.student))

    def index(self) -> npt.NDArray[np.int64]:
        """The position of each answer within its student's answers, from 0."""
        seen: dict[str, int] = {}
        out = np.empty(len(self), dtype=np.int64)
        for i, student in enumerate(self.student):
            out[i] = seen.get(student, 0)
            seen[student] = out[i] + 1
        return out

    def by_student(self) -> dict[str, tuple[list[str], npt.NDArray[np.int8]]]:
        """Per student (in order of first appearance): their skills and answers, in order."""
        rows: dict[str, list[int]] = {}
        for i, student in enumerate(self.student):
            rows.setdefault(student, []).append(i)
        return {
            student: ([self.skill[i] for i in at], self.correct[np.array(at, dtype=np.int64)])
            for student, at in rows.items()
        }

    def skill_sequences(self) -> dict[str, list[npt.NDArray[np.int8]]]:
        """Per skill (in order of first appearance), each student's answers on it in order."""
        runs: dict[str, dict[str, list[int]]] = {}
        for student, skill, correct in zip(
            self.student, self.skill, self.correct.tolist(), strict=True
        ):
            runs.setdefault(skill, {}).setdefault(student, []).append(correct)
        return {
            skill: [np.array(answers, dtype=np.int8) for answers in by_student.values()]
            for skill, by_student in runs.items()
        }


def read_responses(path: str | Path, fmt: Format) -> Responses:
    """Read an answer file in one of `FORMATS`."""
    if fmt == "dkt":
        return read_dkt(path)
    if fmt == "csv":
        return read_csv(path)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def read_dkt(path: str | Path) -> Responses:
    """Read the three-lines-per-student DKT format (see the module docstring)."""
    students: list[str] = []
    skills: list[str] = []
    answers: list[int] = []
    with open(path, "rb") as handle:
        lines = _numbered(path, handle)
        n_students = 0
        for number, text in lines:
            if not text.strip():
                continue  # blank lines between students
            count = _count(path, number, text)
            skill_line = _next_line(path, lines, number, "the skills")
            correct_line = _next_line(path, lines, skill_line[0], "the answers")
            names = _fields(skill_line[1])
            if len(names) != count:
                raise DataFormatError(
                    path, skill_line[0], f"expected {count} skills, found {len(names)}"
                )
            if any(not name for name in names):
                raise DataFormatError(path, skill_line[0], "empty skill")
            marks = _fields(correct_line[1])
            if len(marks) != count:
                raise DataFormatError(
                    path, correct_line[0], f"expected {count} answers, found {len(marks)}"
                )
            for mark in marks:
                if mark not in ("0", "1"):
                    raise DataFormatError(
                        path, correct_line[0], f"an answer must be 0 or 1, found {mark!r}"
                    )
            student = str(n_students)
            n_students += 1
            students.extend([student] * count)
            skills.extend(names)
            answers.extend(mark == "1" for mark in marks)
    return Responses(students, skills, np.array(answers, dtype=np.int8))


def read_csv(path: str | Path) -> Responses:
    """Read the `student,skill,correct` CSV format (see the module docstring)."""
    students: list[str] = []
    skills: list[str] = []
    answers: list[int] = []
    with open(path, "rb") as handle:
        reader = csv.reader(_text_lines(path, handle))
        try:
            header = next(reader)
        except StopIteration:
            raise DataFormatError(path, 1, "empty file: expected a header row") from None
        except csv.Error as exc:
            raise DataFormatError(path, reader.line_num or 1, str(exc)) from None
        names = [name.strip().lower() for name in header]
        missing = [column for column in CSV_COLUMNS if column not in names]
        if missing:
            raise DataFormatError(
                path, reader.line_num, f"the header lacks column(s) {', '.join(missing)}"
            )
        at = [names.index(column) for column in CSV_COLUMNS]
        width = len(names)
        try:
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line
                line = reader.line_num
                if len(row) != width:
                    raise DataFormatError(path, line, f"expected {width} fields, found {len(row)}")
                student, skill, mark = (row[i].strip() for i in at)
                if not student:
                    raise DataFormatError(path, line, "empty student")
                if not skill:
                    raise DataFormatError(path, line, "empty skill")
                if mark not in ("0", "1"):
                    raise DataFormatError(path, line, f"correct must be 0 or 1, found {mark!r}")
                students.append(student)
                skills.append(skill)
                answers.append(mark == "1")
        except csv.Error as exc:
            raise DataFormatError(path, reader.line_num, str(exc)) from None
    return Responses(students, skills, np.array(answers, dtype=np.int8))


def _text_lines(path: str | Path, handle: Iterator[bytes]) -> Iterator[str]:
    """The lines of a binary file as text, so that a decoding error can name its line."""
    for number, raw in enumerate(handle, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataFormatError(path, number, "not UTF-8 text") from None
        yield text.removeprefix("\ufeff") if number == 1 else text


def _numbered(path: str | Path, handle: Iterator[bytes]) -> Iterator[tuple[int, str]]:
    for number, text in enumerate(_text_lines(path, handle), start=1):
        yield number, text.rstrip("\r\n")


def _next_line(
    path: str | Path, lines: Iterator[tuple[int, str]], after: int, what: str
) -> tuple[int, str]:
    try:
        return next(lines)
    except StopIteration:
        raise DataFormatError(path, after + 1, f"the file ends where {what} should be") from None


def _count(path: str | Path, number: int, text: str) -> int:
    token = text.strip()
    if not token.isdigit():
        raise DataFormatError(path, number, f"expected a number of answers, found {token!r}")
    return int(token)


def _fields(text: str) -> list[str]:
    stripped = text.strip()
    if not stripped:
        return []
    if stripped.endswith(","):
        stripped = stripped[:-1]
    return [part.strip() for part in stripped.split(",")]


# --- Scoring ------------------------------------------------------------------------------------


def auc(correct: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count one half); NaN with one class."""
    y = np.asarray(correct).astype(bool).ravel()
    score = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != score.shape:
        raise ValueError("correct and p must have the same length")
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(score, kind="mergesort")
    ordered = score[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    ranks = np.empty(len(ordered))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # average 1-based ranks
    u = float(ranks[y].sum()) - positives * (positives + 1) / 2.0
    return u / (positives * negatives)


def rmse(correct: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Root mean squared error of p against 0/1 outcomes; NaN when empty."""
    y = np.asarray(correct, dtype=np.float64).ravel()
    score = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != score.shape:
        raise ValueError("correct and p must have the same length")
    if len(y) == 0:
        return math.nan
    return float(np.sqrt(np.mean((y - score) ** 2)))


def predict_responses(
    responses: Responses, params: Mapping[str, bkt.BKTParams], default: bkt.BKTParams
) -> npt.NDArray[np.float64]:
    """p(correct) of every answer, in file order, as the live system would have predicted it.

    Each (student, skill) starts at its skill's p(L0); every answer is predicted, then
    folded into the state. Skills missing from `params` use `default`.
    """
    state: dict[tuple[str, str], float] = {}
    start = {skill: bkt.to_logit(p.p_l0) for skill, p in params.items()}
    default_start = bkt.to_logit(default.p_l0)
    out = np.empty(len(responses), dtype=np.float64)
    correct = responses.correct.tolist()
    for i, (student, skill) in enumerate(zip(responses.student, responses.skill, strict=True)):
        skill_params = params.get(skill, default)
        key = (student, skill)
        x = state.get(key)
        if x is None:
            x = start.get(skill, default_start)
        out[i] = bkt.predict_correct_logit(x, skill_params)
        state[key] = bkt.update_logit(x, bool(correct[i]), skill_params)
    return out


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Fitted models, one-step-ahead predictions of the test answers, and their scores."""

    fits: dict[str, bkt.BKTFit]
    predictions: npt.NDArray[np.float64]  # per test answer, in file order
    scored: npt.NDArray[np.bool_]  # the answer's skill was fitted
    auc: float
    rmse: float
    fit_seconds: float
    fit_cpu_seconds: float
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """The numbers for one JSON line (NaN, for a single class, becomes null)."""
        return {
            "fit_seconds": round(self.fit_seconds, 4),
            "fit_cpu_seconds": round(self.fit_cpu_seconds, 4),
            "auc": None if math.isnan(self.auc) else self.auc,
            "rmse": None if math.isnan(self.rmse) else self.rmse,
            **self.counts,
        }


def evaluate(
    train: Responses,
    test: Responses,
    *,
    forgets: bool = False,
    restarts: int = bkt.DEFAULT_RESTARTS,
    seed: int = 0,
    tol: float = bkt.DEFAULT_TOL,
) -> Evaluation:
    """Fit one model per skill on `train`, then score `test` one step ahead (module docstring)."""
    sequences = train.skill_sequences()
    wall, cpu = time.perf_counter(), time.process_time()
    fits = bkt.fit_skills(sequences, forgets=forgets, restarts=restarts, seed=seed, tol=tol)
    fit_seconds, fit_cpu = time.perf_counter() - wall, time.process_time() - cpu
    params = {skill: result.params for skill, result in fits.items()}
    predictions = predict_responses(test, params, bkt.BKTParams())
    scored = np.array([skill in params for skill in test.skill], dtype=bool).reshape(-1)
    y = test.correct[scored]
    return Evaluation(
        fits=fits,
        predictions=predictions,
        scored=scored,
        auc=auc(y, predictions[scored]),
        rmse=rmse(y, predictions[scored]),
        fit_seconds=fit_seconds,
        fit_cpu_seconds=fit_cpu,
        counts={
            "train_students": train.n_students,
            "train_responses": len(train),
            "skills": len(fits),
            "test_students": test.n_students,
            "test_responses": len(test),
            "scored_responses": int(scored.sum()),
            "unseen_skill_responses": int(len(test) - scored.sum()),
        },
    )


def write_predictions(path: str | Path, test: Responses, predictions: npt.ArrayLike) -> int:
    """One row per test answer, in file order: student, skill, index, correct, p."""
    p = np.asarray(predictions, dtype=np.float64).ravel()
    if len(p) != len(test):
        raise ValueError(f"{len(p)} predictions for {len(test)} answers")
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(PREDICTION_COLUMNS)
        columns = (test.student, test.skill, test.index().tolist(), test.correct.tolist())
        writer.writerows(zip(*columns, p.tolist(), strict=True))
    return len(p)
