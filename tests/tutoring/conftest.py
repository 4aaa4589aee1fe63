"""Helpers of the inference worker's tests: real `manage.py inference_worker` processes with the
real GGUF model, and, in this process, the consumer's side of the protocol on the real channel
layer (channels-postgres on the test database, or channels-redis)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from tests.conftest import database_url, kill_group, start_process, wait_for

# tests/site uses Redis database 13; this one is ours, and every name in it is unique per test.
REDIS_DB = 12
REDIS_SERVER = os.environ.get("TUTOR_TEST_REDIS", "redis://127.0.0.1:6379")
QUESTION = "Explain in detail how a centrifugal pump works, step by step."


@dataclass
class Dirs:
    finished: Path
    cancel: Path

    def finished_record(self, request_id: str) -> dict[str, Any] | None:
        path = self.finished / f"{request_id}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def flag_cancel(self, request_id: str) -> None:
        (self.cancel / request_id).touch()


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    return _dirs(tmp_path)


def _dirs(base: Path) -> Dirs:
    found = Dirs(base / "finished", base / "cancel")
    found.finished.mkdir(parents=True, exist_ok=True)
    found.cancel.mkdir(parents=True, exist_ok=True)
    return found


def worker_env(dirs: Dirs, **extra: str) -> dict[str, str]:
    """A worker's environment: the test database, our hooks, the postgres layer unless REDIS_URL
    is given in `extra`."""
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env.update(
        DATABASE_URL=database_url(),
        DJANGO_SETTINGS_MODULE="tutor_site.settings",
        TUTOR_INFERENCE_ON_FINISH="tests.tutoring.hooks.record",
        TUTOR_INFERENCE_IS_CANCELLED="tests.tutoring.hooks.cancel_flagged",
        TUTOR_TEST_FINISHED_DIR=str(dirs.finished),
        TUTOR_TEST_CANCEL_DIR=str(dirs.cancel),
        TUTOR_LOG_LEVEL="INFO",
        # One thread: llama.cpp's threads wait for each other spinning, and with two of them on
        # two busy cores a token can take ten times as long.
        TUTOR_LLM_THREADS="1",
    )
    env.update(extra)
    return env


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path
    channel: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(
            lambda: "ready on channel" in self.output() or self.process.poll() is not None,
            timeout,
            "the inference worker to start",
        )
        assert self.process.poll() is None, self.output()

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, then SIGKILL to the group if it does not end in time; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        code = self.process.poll()
        kill_group(self.process)
        return code


def start_worker(env: dict[str, str], log: Path, channel: str) -> Worker:
    args = [sys.executable, "manage.py", "inference_worker", "--channel", channel]
    return Worker(start_process(args, env, log), log, channel)


def start_app_worker(channel: str, log: Path) -> subprocess.Popen[bytes]:
    """A real worker process on `channel` with the app's own hooks (it saves to Message rows),
    ready to take requests."""
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env.update(DATABASE_URL=database_url(), DJANGO_SETTINGS_MODULE="tutor_site.settings")
    for name in ("TUTOR_INFERENCE_ON_FINISH", "TUTOR_INFERENCE_IS_CANCELLED"):
        env.pop(name, None)
    process = start_process(
        [sys.executable, "manage.py", "inference_worker", "--channel", channel], env, log
    )
    wait_for(
        lambda: "ready on channel" in log.read_text() or process.poll() is not None,
        90,
        "the inference worker",
    )
    assert process.poll() is None, log.read_text()
    return process


def new_worker_channel() -> str:
    """A named channel of its own per test, so nothing meets another test's requests."""
    return f"tutor.inference.test{uuid.uuid4().hex[:12]}"


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Workers a test starts (append them); all stopped after the test, their logs printed."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop(timeout=10)
        print(f"--- worker {worker.pid}\n{worker.output()[-3000:]}")


@pytest.fixture(scope="module")
def shared_worker(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Worker, Dirs]]:
    """One worker on the postgres layer for the tests that do not stop it (loading is cheap,
    but two cores are few)."""
    base = tmp_path_factory.mktemp("shared-worker")
    found = _dirs(base)
    worker = start_worker(worker_env(found), base / "worker.log", new_worker_channel())
    try:
        worker.wait_ready()
        yield worker, found
    finally:
        code = worker.stop()
        print(worker.output()[-4000:])
        assert code == 0, f"the worker ended with {code} on SIGTERM"


@pytest.fixture
def redis_url() -> str:
    """REDIS_URL of our Redis database (names in it are unique per test, so nothing is
    flushed: other sessions may use it at the same time)."""
    import redis

    url = f"{REDIS_SERVER}/{REDIS_DB}"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis server answers at {REDIS_SERVER} ({exc}); start one to run this")
    finally:
        client.close()
    return url


# --- The consumer's side, in this process ------------------------------------------------------


@dataclass
class Answer:
    """What came back for one request."""

    request_id: str
    sent_at: float
    frames: list[tuple[float, str]] = field(default_factory=list)
    done: dict[str, Any] | None = None
    done_at: float | None = None
    started_at: float | None = None
    replies: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.frames)


@contextlib.asynccontextmanager
async def open_layer(redis_url: str | None = None) -> AsyncIterator[Any]:
    """A channel layer of this event loop, on the database (or Redis) the workers use.

    Not get_channel_layer(): in this process the settings' postgres layer was configured
    before pytest-django renamed the database to the test one, and channels-postgres keeps
    one connection pool per process, bound to the event loop that made it.
    """
    if redis_url is not None:
        from channels_redis.core import RedisChannelLayer

        # No socket timeout: redis-py 8 sets 5 s, and channels-redis 4.3 blocks 5 s in BZPOPMIN,
        # so every receive() that waits 5 s would end in redis.exceptions.TimeoutError.
        redis_layer = RedisChannelLayer(hosts=[{"address": redis_url, "socket_timeout": None}])
        try:
            yield redis_layer
        finally:
            await redis_layer.close_pools()
        return
    from channels_postgres import db
    from channels_postgres.core import PostgresChannelLayer

    db.connection_pool = None  # a pool of another test's (closed) event loop
    layer = PostgresChannelLayer(**{**connection.settings_dict, "TEST": {}})
    try:
        yield layer
    finally:
        pool = db.connection_pool
        db.connection_pool = None
        if pool is not None:
            await pool.close()


class Caller:
    """Sends requests to a worker's channel and collects what comes back to its group."""

    def __init__(self, layer: Any, worker_channel: str) -> None:
        self.layer = layer
        self.worker_channel = worker_channel
        self.group = f"tutor-test-{uuid.uuid4().hex}"
        self.answers: dict[str, Answer] = {}
        self.strays: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        # One prefix for both: channels-redis reads all of a layer's specific channels through
        # one key per prefix, behind one lock, and one prefix would starve the other.
        self.channel = await self.layer.new_channel()
        self.reply_channel = await self.layer.new_channel()
        await self.layer.group_add(self.group, self.channel)
        self._tasks = [asyncio.ensure_future(self._pump(self.channel, reply=False))]
        # channels-postgres: its listener starts with the first receive(), and a second
        # receive() before it runs starts another (every message would come twice); a starting
        # listener also takes every message in the table, so ours must be up before we send.
        if hasattr(self.layer, "listener_task_is_running"):
            deadline = time.monotonic() + 20
            while True:
                running = self.layer.listener_task_is_running
                if running is not None and running.is_set():
                    break
                assert time.monotonic() < deadline, "the channel layer's listener did not start"
                await asyncio.sleep(0.05)
        self._tasks.append(asyncio.ensure_future(self._pump(self.reply_channel, reply=True)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _pump(self, channel: str, *, reply: bool) -> None:
        while True:
            message = await self.layer.receive(channel)
            now = time.monotonic()
            answer = self.answers.get(message.get("request_id", ""))
            if answer is None:
                self.strays.append(message)
                continue
            if reply:
                answer.replies.append(message)
            elif message["type"] == "chat.started":
                assert not answer.frames and answer.done is None, "chat.started comes first"
                answer.started_at = now
            elif message["type"] == "chat.token":
                assert answer.done is None, "a frame after chat.done"
                answer.frames.append((now, message["text"]))
            elif message["type"] == "chat.done":
                assert answer.done is None, "a second chat.done"
                answer.done, answer.done_at = message, now
            else:
                self.strays.append(message)
            answer.changed.set()

    def payload(self, **fields: Any) -> dict[str, Any]:
        request = {
            "type": "generate",
            "request_id": str(uuid.uuid4()),
            "group": self.group,
            "messages": [
                {"role": "system", "content": "You are a patient tutor."},
                {"role": "user", "content": QUESTION},
            ],
            "max_tokens": 48,
            "temperature": 0.0,
            "time_limit": 60.0,
            "reply_channel": None,
            "message_id": None,
        }
        request.update(fields)
        return request

    async def send(self, request: dict[str, Any]) -> Answer:
        answer = Answer(str(request.get("request_id", "")), time.monotonic())
        self.answers[answer.request_id] = answer
        await self.layer.send(self.worker_channel, request)
        return answer

    async def ask(self, **fields: Any) -> Answer:
        return await self.send(self.payload(**fields))

    async def until(self, answer: Answer, what: str, timeout: float) -> None:
        """Wait until `what` ("frame", "done" or "reply") has arrived for the answer."""

        def arrived() -> bool:
            if what == "frame":
                return bool(answer.frames) or answer.done is not None
            if what == "reply":
                return bool(answer.replies)
            return answer.done is not None

        deadline = time.monotonic() + timeout
        while not arrived():
            for task in self._tasks:  # a receiver that failed an assertion
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise AssertionError("the receiver failed") from task.exception()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} for {answer.request_id} within {timeout:.0f}s")
            answer.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(answer.changed.wait(), timeout=left)

    async def done(self, answer: Answer, timeout: float = 60) -> dict[str, Any]:
        await self.until(answer, "done", timeout)
        assert answer.done is not None
        return answer.done


@contextlib.asynccontextmanager
async def calling(worker_channel: str, redis_url: str | None = None) -> AsyncIterator[Caller]:
    async with open_layer(redis_url) as layer:
        caller = Caller(layer, worker_channel)
        await caller.start()
        try:
            yield caller
        finally:
            await caller.close()
