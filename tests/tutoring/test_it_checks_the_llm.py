"""`manage.py llm_check` with the real GGUF model and the real demo course: it reports the speed
and the support of what the model wrote, leaves no row behind, and refuses a model or a course
it cannot use with a message that says what to do."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from knowledge.models import Course
from tutoring import llm

pytestmark = pytest.mark.timeout(300)


def llm_check(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("llm_check", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def one_thread(settings: Any) -> None:
    # llama.cpp's threads spin waiting for each other: two on two busy cores crawl.
    settings.TUTOR_LLM_THREADS = 1


def test_it_reports_speed_and_support_of_the_configured_model(
    demo_course: Course, one_thread: None
) -> None:
    out, err = llm_check("--questions", "2", "--max-tokens", "32", "--json")
    report: dict[str, Any] = json.loads(out)

    model = report["model"]
    assert model["path"] == str(llm.model_path())
    assert model["bytes"] > 0 and model["load_s"] > 0
    assert model["threads"] == 1 and model["gpu_layers"] == 0
    assert report["course"] == demo_course.slug and report["max_tokens"] == 32

    questions = report["questions"]
    assert len(questions) == 2
    for question in questions:
        assert question["status"] in ("complete", "length"), question
        assert question["prompt_tokens"] > 0 and 0 < question["completion_tokens"] <= 32
        assert question["ttft_ms"] > 0 and question["tokens_per_s"] > 0
        assert question["passages"] > 0 and question["answer"].strip()
        assert question["judged"] == len(question["sentences"])
        assert question["supported"] == sum(s["supported"] for s in question["sentences"])

    summary = report["summary"]
    assert summary["ttft_ms_p50"] > 0 and summary["tokens_per_s_p50"] > 0
    sentences = [s for question in questions for s in question["sentences"]]
    assert summary["sentences"] == len(sentences) > 0
    assert summary["supported"] == sum(s["supported"] for s in sentences)
    assert 0.0 <= summary["supported_share"] <= 1.0
    assert summary["supported_share"] == pytest.approx(
        summary["supported"] / len(sentences), abs=1e-4
    )

    # Progress on stderr as each question finishes; the throwaway learner is gone.
    assert "[1/2]" in err and "[2/2]" in err
    assert not User.objects.filter(username__startswith="llm-check").exists()


def test_it_prints_a_readable_table(demo_course: Course, one_thread: None) -> None:
    out, _ = llm_check("--questions", "1", "--max-tokens", "8", "--verbosity", "2")

    assert f"model    {llm.model_path()}" in out
    assert "| TTFT ms | tokens/s | supported |" in out
    assert "p50 time to first token" in out and "supported sentences" in out


def test_it_refuses_a_missing_model_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"

    with pytest.raises(CommandError, match=re.escape(f"no model file at {missing}")):
        llm_check("--model", str(missing))


def test_it_refuses_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"<html>404 Not Found</html>")

    with pytest.raises(CommandError, match="is not a GGUF file"):
        llm_check("--model", str(fake))


def test_it_says_how_to_load_the_demo_course(demo_course: Course) -> None:
    # update(), not delete(): nothing of the session's demo course is lost; rolled back after.
    Course.objects.filter(pk=demo_course.pk).update(slug="moved-away")

    with pytest.raises(CommandError, match=re.escape("`python manage.py load_demo` first")):
        llm_check("--questions", "1")
    with pytest.raises(CommandError, match="give --questions-file"):
        llm_check("--course", "moved-away")
