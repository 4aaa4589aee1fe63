"""Reading answer logs: the DKT and CSV formats, and errors that name the line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from learners import kt_data


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_it_reads_dkt(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "3\n12,7,12,\n1,0,1,\n\n1\n7\n0\n")
    answers = kt_data.read_dkt(path)
    assert answers.student == ["0", "0", "0", "1"]
    assert answers.skill == ["12", "7", "12", "7"]
    assert answers.correct.tolist() == [1, 0, 1, 0]
    assert answers.index().tolist() == [0, 1, 2, 0]
    by_student = answers.by_student()
    assert list(by_student) == ["0", "1"]
    assert by_student["0"][0] == ["12", "7", "12"]
    assert by_student["0"][1].tolist() == [1, 0, 1]
    sequences = answers.skill_sequences()
    assert list(sequences) == ["12", "7"]
    assert [s.tolist() for s in sequences["12"]] == [[1, 1]]
    assert [s.tolist() for s in sequences["7"]] == [[0], [0]]


def test_it_reads_dkt_with_windows_line_ends_and_no_final_newline(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "\ufeff2\r\n5,5\r\n0,1")
    answers = kt_data.read_dkt(path)
    assert answers.correct.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("2\n1,2\n1,0\nx\n1\n1\n", 4, "expected a number of answers"),
        ("2\n1,2\n1,0\n3\n1,2\n1,0,1\n", 5, "expected 3 skills, found 2"),
        ("2\n1,2\n1,0,1\n", 3, "expected 2 answers, found 3"),
        ("2\n1,2\n1,2\n", 3, "must be 0 or 1, found '2'"),
        ("2\n1,,\n1,0\n", 2, "empty skill"),
        ("2\n1,2\n", 3, "the file ends where the answers should be"),
        ("2\n", 2, "the file ends where the skills should be"),
        ("-1\n\n\n", 1, "expected a number of answers"),
    ],
)
def test_it_names_the_bad_dkt_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, "bad.txt", text)
    with pytest.raises(kt_data.DataFormatError, match=message) as caught:
        kt_data.read_dkt(path)
    assert caught.value.line == line
    assert f"line {line}" in str(caught.value)
    assert str(path) in str(caught.value)


def test_it_reads_csv(tmp_path: Path) -> None:
    text = (
        "\ufeffSkill,student,correct,extra\nfractions,ann,0,x\nfractions,bob,1,y\n\nratio,ann,1,z\n"
    )
    answers = kt_data.read_csv(write(tmp_path, "a.csv", text))
    assert answers.student == ["ann", "bob", "ann"]
    assert answers.skill == ["fractions", "fractions", "ratio"]
    assert answers.correct.tolist() == [0, 1, 1]
    assert answers.index().tolist() == [0, 0, 1]
    assert answers.n_students == 2


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", 1, "empty file"),
        ("student,skill\n", 1, "lacks column\\(s\\) correct"),
        ("student,skill,correct\nann,a,1\nbob,a\n", 3, "expected 3 fields, found 2"),
        ("student,skill,correct\nann,a,1\nbob,a,yes\n", 3, "correct must be 0 or 1"),
        ("student,skill,correct\n,a,1\n", 2, "empty student"),
        ("student,skill,correct\nann, ,1\n", 2, "empty skill"),
        ('student,skill,correct\nann,"a\nb",1\nbob,c,2\n', 4, "correct must be 0 or 1"),
    ],
)
def test_it_names_the_bad_csv_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(kt_data.DataFormatError, match=message) as caught:
        kt_data.read_csv(path)
    assert caught.value.line == line


def test_it_reads_either_format_by_name(tmp_path: Path) -> None:
    dkt = write(tmp_path, "a.txt", "1\n3\n1\n")
    table = write(tmp_path, "a.csv", "student,skill,correct\n0,3,1\n")
    for path, fmt in ((dkt, "dkt"), (table, "csv")):
        answers = kt_data.read_responses(path, fmt)  # type: ignore[arg-type]
        assert (answers.student, answers.skill) == (["0"], ["3"])
        np.testing.assert_array_equal(answers.correct, [1])
    with pytest.raises(ValueError, match="unknown format"):
        kt_data.read_responses(dkt, "json")  # type: ignore[arg-type]


def test_it_names_the_line_that_is_not_text(tmp_path: Path) -> None:
    dkt = tmp_path / "a.txt"
    dkt.write_bytes(b"1\n3\n1\n1\n\xff\xfe\n1\n")
    with pytest.raises(kt_data.DataFormatError, match="line 5: not UTF-8") as caught:
        kt_data.read_dkt(dkt)
    assert caught.value.line == 5
    table = tmp_path / "a.csv"
    table.write_bytes(b"student,skill,correct\nann,a,1\nbob,\xff,1\n")
    with pytest.raises(kt_data.DataFormatError, match="line 3: not UTF-8"):
        kt_data.read_csv(table)
