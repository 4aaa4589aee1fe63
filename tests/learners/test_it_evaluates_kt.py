"""One-step-ahead evaluation: AUC and RMSE, the live prediction loop, `kt_evaluate`."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from learners import bkt, kt_data

SKILLS = {
    "7": bkt.BKTParams(p_l0=0.3, p_t=0.15, p_g=0.2, p_s=0.1),
    "12": bkt.BKTParams(p_l0=0.6, p_t=0.05, p_g=0.3, p_s=0.15),
    "30": bkt.BKTParams(p_l0=0.1, p_t=0.3, p_g=0.1, p_s=0.05),
}


def simulated_students(n: int, seed: int) -> list[tuple[list[str], list[int]]]:
    """Students answering a random mix of the skills, each skill following its own BKT."""
    rng = np.random.default_rng(seed)
    students = []
    for _ in range(n):
        known = {skill: rng.random() < p.p_l0 for skill, p in SKILLS.items()}
        skills, answers = [], []
        for _ in range(int(rng.integers(1, 25))):
            skill = str(rng.choice(list(SKILLS)))
            p = SKILLS[skill]
            right = rng.random() >= p.p_s if known[skill] else rng.random() < p.p_g
            known[skill] = known[skill] or rng.random() < p.p_t
            skills.append(skill)
            answers.append(int(right))
        students.append((skills, answers))
    return students


def write_dkt(path: Path, students: list[tuple[list[str], list[int]]]) -> Path:
    lines = []
    for skills, answers in students:
        lines += [str(len(skills)), ",".join(skills) + ",", ",".join(map(str, answers)) + ","]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, students: list[tuple[list[str], list[int]]]) -> Path:
    rows = [
        (f"s{i}", skill, answer)
        for i, (skills, answers) in enumerate(students)
        for skill, answer in zip(skills, answers, strict=True)
    ]
    # Interleave students: round-robin over their answers keeps each one's own order.
    by_student: dict[str, list[tuple[str, str, int]]] = {}
    for row in rows:
        by_student.setdefault(row[0], []).append(row)
    interleaved = []
    while any(by_student.values()):
        for queue in by_student.values():
            if queue:
                interleaved.append(queue.pop(0))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "skill", "correct"])
        writer.writerows(interleaved)
    return path


def brute_force_auc(y: np.ndarray, p: np.ndarray) -> float:
    positives, negatives = p[y == 1], p[y == 0]
    wins = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((wins + 0.5 * ties) / (len(positives) * len(negatives)))


def test_it_computes_auc_from_ranks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = (rng.random(300) < 0.6).astype(int)
        p = np.round(rng.random(300), 1)  # many ties
        assert kt_data.auc(y, p) == pytest.approx(brute_force_auc(y, p), abs=1e-12)
    assert kt_data.auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert kt_data.auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert kt_data.auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(kt_data.auc([1, 1], [0.2, 0.3]))


def test_it_computes_rmse() -> None:
    # errors 0.5, -0.5, 0.1, 0: sqrt((0.25 + 0.25 + 0.01 + 0) / 4) = sqrt(0.1275)
    assert kt_data.rmse([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.0]) == pytest.approx(math.sqrt(0.1275))
    assert math.isnan(kt_data.rmse([], []))


def test_it_predicts_as_the_live_system_does(tmp_path: Path) -> None:
    students = simulated_students(40, seed=1)
    answers = kt_data.read_csv(write_csv(tmp_path / "a.csv", students))
    known = {"7": SKILLS["7"], "12": SKILLS["12"]}  # "30" is unknown: the defaults
    predicted = kt_data.predict_responses(answers, known, bkt.BKTParams())
    state: dict[tuple[str, str], float] = {}
    for i, (student, skill) in enumerate(zip(answers.student, answers.skill, strict=True)):
        params = known.get(skill, bkt.BKTParams())
        x = state.get((student, skill), bkt.to_logit(params.p_l0))
        assert predicted[i] == bkt.predict_correct_logit(x, params)
        state[(student, skill)] = bkt.update_logit(x, bool(answers.correct[i]), params)
    # the first answer of each (student, skill) is predicted from p(L0)
    first = answers.index() == 0
    skill_of_first = np.array(answers.skill)[first]
    for p, skill in zip(predicted[first], skill_of_first, strict=True):
        params = known.get(str(skill), bkt.BKTParams())
        assert p == pytest.approx(bkt.predict_correct(params.p_l0, params), abs=1e-15)


def test_it_scores_only_skills_it_has_fitted(tmp_path: Path) -> None:
    train = kt_data.read_dkt(write_dkt(tmp_path / "train.txt", simulated_students(150, 2)))
    test_students = [*simulated_students(30, 3), (["99", "7"], [1, 0])]
    test = kt_data.read_dkt(write_dkt(tmp_path / "test.txt", test_students))
    result = kt_data.evaluate(train, test, restarts=3)
    assert set(result.fits) == {"7", "12", "30"}
    assert result.counts["unseen_skill_responses"] == 1
    assert result.counts["scored_responses"] == len(test) - 1
    assert result.scored.tolist() == [skill != "99" for skill in test.skill]
    y, p = test.correct[result.scored], result.predictions[result.scored]
    assert result.auc == kt_data.auc(y, p)
    assert result.rmse == kt_data.rmse(y, p)
    assert 0.5 < result.auc <= 1.0


@pytest.mark.parametrize(("fmt", "writer"), [("dkt", write_dkt), ("csv", write_csv)])
def test_kt_evaluate_writes_predictions_and_one_json_line(
    tmp_path: Path, fmt: str, writer: object
) -> None:
    assert callable(writer)
    train = writer(tmp_path / f"train.{fmt}", simulated_students(120, 4))
    test = writer(tmp_path / f"test.{fmt}", simulated_students(25, 5))
    out = tmp_path / "predictions.csv"
    stdout = io.StringIO()
    call_command(
        "kt_evaluate",
        "--train", str(train),
        "--test", str(test),
        "--format", fmt,
        "--forgets",
        "--restarts", "4",
        "--predictions", str(out),
        stdout=stdout,
    )  # fmt: skip
    lines = stdout.getvalue().strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    test_answers = kt_data.read_responses(test, fmt)  # type: ignore[arg-type]
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["student", "skill", "index", "correct", "p"]
    assert len(rows) == len(test_answers) == summary["test_responses"]
    assert [row["student"] for row in rows] == test_answers.student
    assert [int(row["index"]) for row in rows] == test_answers.index().tolist()
    assert [int(row["correct"]) for row in rows] == test_answers.correct.tolist()
    p = np.array([float(row["p"]) for row in rows])
    assert ((p > 0) & (p < 1)).all()
    assert summary["auc"] == pytest.approx(kt_data.auc(test_answers.correct, p), abs=1e-12)
    assert summary["rmse"] == pytest.approx(kt_data.rmse(test_answers.correct, p), abs=1e-12)
    assert summary["fit_seconds"] >= 0 and summary["forgets"] is True
    assert summary["skills"] == 3 and summary["unseen_skill_responses"] == 0


def test_kt_evaluate_names_the_bad_line(tmp_path: Path) -> None:
    train = write_dkt(tmp_path / "train.txt", simulated_students(10, 6))
    bad = tmp_path / "test.txt"
    bad.write_text("2\n7,7\n1,1\n2\n7,7\n1,x\n", encoding="utf-8")
    out = tmp_path / "predictions.csv"
    with pytest.raises(CommandError, match="line 6: an answer must be 0 or 1"):
        call_command(
            "kt_evaluate",
            "--train", str(train),
            "--test", str(bad),
            "--format", "dkt",
            "--predictions", str(out),
            stdout=io.StringIO(),
        )  # fmt: skip
    assert not out.exists()
