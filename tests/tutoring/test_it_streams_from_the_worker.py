"""The inference worker, as a real `manage.py inference_worker` process with the real GGUF model
at temperature 0, talking over the real channel layer: it streams batched frames and one
chat.done, saves through its hook, keeps its limits, stops when asked, survives bad requests,
and shares a channel with other workers.

A worker killed with SIGKILL sends no chat.done at all: the consumer must time out on its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import wait_for
from tests.tutoring.conftest import (
    Dirs,
    Worker,
    calling,
    new_worker_channel,
    start_worker,
    worker_env,
)
from tutoring.inference import FRAME_SECONDS, RECEIVE_RETRY_SECONDS

# django_db: the workers read the test database; without a test marked so, pytest-django would
# not create it when this file runs alone, and the demo course would be looked for elsewhere.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180), pytest.mark.django_db]

T = TypeVar("T")
FIELDS = (
    "request_id",
    "message_id",
    "text",
    "status",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "ttft_ms",
    "total_ms",
    "support",  # empty: these requests carry no passages to check against
)
ESSAY = "Write a long essay on the maintenance of centrifugal pumps."
IDLE_SECONDS = 5.5


def run(scenario: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(scenario)


def rate(done: dict[str, Any]) -> float:
    """Tokens per second after the first token."""
    generating = (done["total_ms"] - done["ttft_ms"]) / 1000
    return done["completion_tokens"] / generating if generating > 0 else 0.0


def report(what: str, done: dict[str, Any], frames: int) -> None:
    print(
        f"METRIC {what}: {done['prompt_tokens']} prompt + {done['completion_tokens']} completion "
        f"tokens in {frames} frames, ttft {done['ttft_ms']:.0f} ms, total {done['total_ms']:.0f} "
        f"ms, {rate(done):.0f} tokens/s, status {done['status']}"
    )


def saved(dirs: Dirs, request_id: str) -> dict[str, Any]:
    """What the on-finish hook wrote; it runs before chat.done is sent."""
    found = dirs.finished_record(request_id)
    assert found is not None, "the on-finish hook was not called"
    return found


def test_it_streams_tokens_then_one_done_and_saves(shared_worker: tuple[Worker, Dirs]) -> None:
    worker, dirs = shared_worker

    async def scenario() -> Any:
        async with calling(worker.channel) as caller:
            answer = await caller.ask(
                max_tokens=64, message_id=7, reply_channel=caller.reply_channel
            )
            done = await caller.done(answer)
            await caller.until(answer, "reply", 10)
            await asyncio.sleep(0.3)  # time for a stray second chat.done to show up
            return answer, done

    answer, done = run(scenario())
    report("first request", done, len(answer.frames))
    assert len(answer.frames) >= 2
    assert answer.started_at is not None and answer.started_at <= answer.frames[0][0]
    assert answer.text == done["text"]
    assert done["text"].strip()
    assert done["status"] in ("complete", "length")
    assert done["error"] is None
    assert done["prompt_tokens"] > 0
    assert 0 < done["completion_tokens"] <= 64
    assert 0 < done["ttft_ms"] <= done["total_ms"]
    assert done["worker"] == worker.pid
    assert done["message_id"] == 7
    assert answer.replies == [done], "the reply channel gets the same chat.done"
    assert saved(dirs, answer.request_id) == {key: done[key] for key in FIELDS}


def test_it_batches_tokens_into_frames(shared_worker: tuple[Worker, Dirs]) -> None:
    worker, _ = shared_worker

    async def scenario() -> Any:
        async with calling(worker.channel) as caller:
            answer = await caller.ask(messages=[{"role": "user", "content": ESSAY}], max_tokens=96)
            return answer, await caller.done(answer)

    answer, done = run(scenario())
    report("batching", done, len(answer.frames))
    frames, tokens = len(answer.frames), done["completion_tokens"]
    assert answer.text == done["text"]
    assert tokens > 32
    # Frames leave at most every FRAME_SECONDS; tokens come faster than that on this model.
    assert frames < tokens, f"{frames} frames for {tokens} tokens: not batched"
    generating = (done["total_ms"] - done["ttft_ms"]) / 1000
    assert frames <= 2 + generating / FRAME_SECONDS
    # ... and keep coming while tokens flow, rather than in one lump at the end.
    assert frames >= 3
    gaps = [b[0] - a[0] for a, b in zip(answer.frames, answer.frames[1:], strict=False)]
    assert statistics.median(gaps) < 0.15, gaps


def test_it_answers_the_same_at_temperature_zero(shared_worker: tuple[Worker, Dirs]) -> None:
    worker, _ = shared_worker

    async def scenario() -> list[dict[str, Any]]:
        async with calling(worker.channel) as caller:
            found = []
            for _ in range(2):
                answer = await caller.ask(max_tokens=40, temperature=0.0)
                found.append(await caller.done(answer))
            return found

    first, second = run(scenario())
    assert first["text"] == second["text"]
    assert first["completion_tokens"] == second["completion_tokens"]
    assert first["prompt_tokens"] == second["prompt_tokens"]


def test_it_keeps_the_token_and_time_limits(shared_worker: tuple[Worker, Dirs]) -> None:
    worker, dirs = shared_worker
    essay = [{"role": "user", "content": ESSAY}]

    async def scenario() -> Any:
        async with calling(worker.channel) as caller:
            short = await caller.done(await caller.ask(messages=essay, max_tokens=8))
            slow = await caller.ask(messages=essay, max_tokens=1000, time_limit=0.3)
            return short, slow, await caller.done(slow)

    short, slow, timed_out = run(scenario())
    assert short["status"] == "length"
    assert 0 < short["completion_tokens"] <= 8
    assert short["text"]
    assert saved(dirs, short["request_id"])["status"] == "length"
    assert timed_out["status"] == "timeout"
    assert timed_out["completion_tokens"] < 1000
    assert 300 <= timed_out["total_ms"] < 3000
    assert slow.text == timed_out["text"]


def test_it_stops_when_the_app_says_so(shared_worker: tuple[Worker, Dirs]) -> None:
    worker, dirs = shared_worker

    async def scenario() -> Any:
        async with calling(worker.channel) as caller:
            answer = await caller.ask(messages=[{"role": "user", "content": ESSAY}], max_tokens=400)
            await caller.until(answer, "frame", 60)
            dirs.flag_cancel(answer.request_id)  # as the app sets its DB flag
            flagged_at = time.monotonic()
            done = await caller.done(answer, timeout=10)
            # A stop asked for before the worker starts: nothing is generated.
            early = caller.payload(max_tokens=400)
            dirs.flag_cancel(early["request_id"])
            early_done = await caller.done(await caller.send(early))
            return answer, done, flagged_at, early_done

    answer, done, flagged_at, early = run(scenario())
    assert answer.done_at is not None
    took = answer.done_at - flagged_at
    print(f"METRIC stop: chat.done {took * 1000:.0f} ms after the flag")
    assert done["status"] == "stopped"
    assert done["completion_tokens"] < 400
    assert took < 1.5, f"stopped {took:.2f}s after the flag"
    assert answer.text == done["text"]
    assert saved(dirs, answer.request_id)["status"] == "stopped"
    assert early["status"] == "stopped"
    assert early["completion_tokens"] == 0
    assert early["text"] == ""


def test_it_reports_bad_requests_and_goes_on(shared_worker: tuple[Worker, Dirs]) -> None:
    worker, dirs = shared_worker

    async def scenario() -> list[dict[str, Any]]:
        async with calling(worker.channel) as caller:
            missing = caller.payload()
            del missing["messages"]
            wrong = caller.payload(max_tokens="lots")
            # ~15 KB: past the model's context, and past what a postgres NOTIFY carries.
            too_long = caller.payload(messages=[{"role": "user", "content": "pump " * 3000}])
            good = caller.payload(max_tokens=16)
            answers = [await caller.send(request) for request in (missing, wrong, too_long, good)]
            return [await caller.done(answer) for answer in answers]

    missing, wrong, too_long, good = run(scenario())
    assert missing["status"] == "error"
    assert "messages" in missing["error"]
    assert wrong["status"] == "error"
    assert "max_tokens" in wrong["error"]
    assert too_long["status"] == "error"
    assert "context" in too_long["error"]
    assert saved(dirs, missing["request_id"])["status"] == "error"
    assert good["status"] in ("complete", "length")
    assert good["text"]
    assert {missing["worker"], good["worker"]} == {worker.pid}
    assert worker.process.poll() is None


def test_it_loses_a_killed_workers_answer_and_the_next_worker_serves(
    django_db_setup: None, dirs: Dirs, workers: list[Worker], tmp_path: Path
) -> None:
    """kill -9 mid-answer: no chat.done ever (the consumer must time out). On channels-postgres
    one process at a time holds a named channel; a second worker waits as a standby."""
    channel = new_worker_channel()
    env = worker_env(dirs)

    def start(name: str) -> Worker:
        worker = start_worker(env, tmp_path / f"{name}.log", channel)
        workers.append(worker)
        return worker

    async def scenario() -> None:
        async with calling(channel) as caller:
            first = start("first")
            await asyncio.to_thread(first.wait_ready)
            killed = await caller.ask(messages=[{"role": "user", "content": ESSAY}], max_tokens=400)
            await caller.until(killed, "frame", 60)
            os.killpg(first.pid, signal.SIGKILL)
            await asyncio.sleep(2)
            assert killed.done is None

            # Two new workers: one holds the channel, the other is its standby.
            second, third = start("second"), start("third")
            await asyncio.gather(*(asyncio.to_thread(w.wait_ready) for w in (second, third)))
            after = await caller.done(await caller.ask(max_tokens=16))
            assert after["status"] in ("complete", "length")
            serving = next(w for w in (second, third) if w.pid == after["worker"])
            standby = third if serving is second else second

            os.killpg(serving.pid, signal.SIGKILL)
            started = time.monotonic()
            taken_over = await caller.done(await caller.ask(max_tokens=16), timeout=60)
            took = time.monotonic() - started
            print(f"METRIC standby took over and answered in {took:.1f}s")
            assert taken_over["worker"] == standby.pid
            assert took < 4 * RECEIVE_RETRY_SECONDS + 20

            # The killed request was never answered, not even by the workers started after it,
            # though channels-postgres hands a starting listener every message still in its
            # table (unless the first worker took it from there): one handed it turned it away.
            await asyncio.sleep(1)
            assert killed.done is None
            assert dirs.finished_record(killed.request_id) is None
            logs = second.output() + third.output()
            mentions = [line for line in logs.splitlines() if killed.request_id in line]
            assert all(f"{killed.request_id} was already taken" in line for line in mentions)

    run(scenario())


def test_it_finishes_with_an_error_on_sigterm(
    django_db_setup: None, dirs: Dirs, workers: list[Worker], tmp_path: Path
) -> None:
    worker = start_worker(worker_env(dirs), tmp_path / "worker.log", new_worker_channel())
    workers.append(worker)
    worker.wait_ready()

    async def scenario() -> dict[str, Any]:
        async with calling(worker.channel) as caller:
            answer = await caller.ask(messages=[{"role": "user", "content": ESSAY}], max_tokens=400)
            await caller.until(answer, "frame", 60)
            worker.process.send_signal(signal.SIGTERM)
            return await caller.done(answer, timeout=10)

    done = run(scenario())
    assert done["status"] == "error"
    assert done["error"] == "worker stopping"
    assert done["completion_tokens"] < 400
    assert saved(dirs, done["request_id"])["error"] == "worker stopping"
    wait_for(lambda: worker.process.poll() is not None, 15, "the worker to exit")
    assert worker.process.returncode == 0, worker.output()


def test_two_workers_share_a_channel_on_redis(
    django_db_setup: None, dirs: Dirs, workers: list[Worker], tmp_path: Path, redis_url: str
) -> None:
    channel = new_worker_channel()
    env = worker_env(dirs, REDIS_URL=redis_url)
    for name in ("one", "two"):
        workers.append(start_worker(env, tmp_path / f"{name}.log", channel))
    for worker in workers:
        worker.wait_ready()

    async def scenario() -> list[dict[str, Any]]:
        async with calling(channel, redis_url) as caller:
            # Idle past 5 s first: under redis-py 8's default 5 s socket timeout, the workers'
            # blocking receive() (BZPOPMIN for 5 s in channels-redis 4.3) fails, and they must
            # carry on.
            await asyncio.sleep(IDLE_SECONDS)
            answers = [await caller.ask(max_tokens=24) for _ in range(4)]
            return [await caller.done(answer, timeout=90) for answer in answers]

    dones = run(scenario())
    assert all(done["status"] in ("complete", "length") for done in dones)
    pids = {done["worker"] for done in dones}
    assert pids == {worker.pid for worker in workers}, "both workers serve"


def test_a_request_queued_while_the_listener_started_is_still_taken(
    channel_layer_on_test_database: None,
) -> None:
    """channels-postgres reads the queued messages, then starts listening: a request queued in
    between is neither read nor notified. The worker reads the channel's table once its listener
    runs. (A fault test: the message is written to the table without its notification.)"""
    from channels.layers import get_channel_layer
    from channels_postgres.models import Message as QueuedMessage
    from django.utils import timezone

    from tutoring.inference import Worker as InferenceWorker

    layer = get_channel_layer()
    channel = new_worker_channel()
    request = {"type": "generate", "request_id": "missed-1", "messages": []}

    async def scenario() -> dict[str, Any] | None:
        # Another receiver starts the process's listener, with its first read, before the request
        # is queued.
        other = asyncio.ensure_future(layer.receive(f"{channel}.other"))
        for _ in range(200):
            listening = getattr(layer, "listener_task_is_running", None)
            if listening is not None and listening.is_set():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the layer's listener did not start")
        await asyncio.to_thread(
            QueuedMessage.objects.create,
            channel=channel,
            message=layer.serialize(request),
            expire=timezone.now() + timedelta(seconds=60),
        )
        worker = InferenceWorker(engine=None, layer=layer, channel=channel)  # type: ignore[arg-type]
        try:
            return await asyncio.wait_for(worker._receive(), 4 * RECEIVE_RETRY_SECONDS + 5)
        finally:
            worker.stop()
            await worker._cancel_receiving()
            other.cancel()

    assert run(scenario()) == request
