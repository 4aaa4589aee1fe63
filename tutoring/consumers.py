"""The chat websocket: protocol only; every write goes through tutoring.services.

Frames from the browser (JSON):
    {"type": "ask", "text": "...", "client_id": "..."}   a question (a resend is not a second)
    {"type": "stop"}                                      stop the answer being written
    {"type": "answer", "check": id, "text": "..."}        a response to a check question
Frames to the browser:
    {"type": "history", "messages": [...], "checks": [...]}   on connect: what it missed
    {"type": "question", "message": {...}}                the saved question, with its answer's id
    {"type": "started", "message_id": n}                  a worker has taken the question
    {"type": "token", "message_id": n, "text": "..."}     streamed text (several tokens a frame)
    {"type": "support", "message_id": n, "marks": [...]}  sentences checked against the passages
                                                          ("supported": false: not found in
                                                          your course material)
    {"type": "done", "message": {...}}                    the finished answer, saved
    {"type": "check", "check": {...}}                     a check question after an answer
    {"type": "graded", "check": {...}, "mastery": {...}}  its grade, reason and the new p(L)
    {"type": "error", "error": "..."}                     a refusal or a failure, in words
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from learners.models import Item, mode_for
from tutoring import checks, services
from tutoring.models import Check, Conversation, Message

logger = logging.getLogger(__name__)

# Close codes (4000-4999 are ours).
FORBIDDEN = 4403
NOT_FOUND = 4404
TOO_BIG = 1009


serialise = services.message_json


class ChatConsumer(AsyncJsonWebsocketConsumer):
    conversation: Conversation
    watchdog: asyncio.Task[None] | None = None
    started = False
    last_activity = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Short answers being graded by a worker: request id -> (check id, fallback timer).
        self.gradings: dict[str, tuple[int, asyncio.Task[None], float]] = {}

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=FORBIDDEN)
            return
        conversation_id = int(self.scope["url_route"]["kwargs"]["conversation"])
        found = await self._conversation(conversation_id, user.pk)
        if found is None:
            logger.warning("user %s refused conversation %s", user.pk, conversation_id)
            await self.close(code=FORBIDDEN)
            return
        self.conversation = found
        self.group = found.group_name()
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        query = parse_qs(self.scope.get("query_string", b"").decode())
        raw_after = query.get("after", ["0"])[0]
        after = int(raw_after) if raw_after.isdigit() else 0
        messages, offered = await self._history(after)
        await self.send_json({"type": "history", "messages": messages, "checks": offered})

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if self.watchdog is not None:
            self.watchdog.cancel()
        for _, timer, _ in self.gradings.values():
            timer.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        size = len(text_data or "") + len(bytes_data or b"")
        if size > settings.TUTOR_WS_MAX_FRAME:
            logger.warning("conversation %s: frame of %d bytes refused", self.conversation.pk, size)
            await self.close(code=TOO_BIG)
            return
        try:
            content = json.loads(text_data or "")
        except ValueError:
            await self.send_json({"type": "error", "error": "frames must be JSON"})
            return
        if not isinstance(content, dict):
            await self.send_json({"type": "error", "error": "frames must be JSON objects"})
            return
        await self.receive_json(content)

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        kind = content.get("type")
        if kind == "ask":
            await self._ask(str(content.get("text", "")), str(content.get("client_id", ""))[:64])
        elif kind == "stop":
            await database_sync_to_async(services.request_stop)(conversation=self.conversation)
        elif kind == "answer":
            check_id = content.get("check")
            if isinstance(check_id, bool) or not isinstance(check_id, int):
                await self.send_json({"type": "error", "error": "which check question?"})
                return
            await self._answer(check_id, str(content.get("text", "")))
        else:
            await self.send_json({"type": "error", "error": f"unknown frame type {kind!r}"})

    async def _ask(self, text: str, client_id: str) -> None:
        if not await self._allowed():
            await self.send_json(
                {"type": "error", "error": "too many questions; wait a minute and ask again"}
            )
            return
        try:
            asked = await database_sync_to_async(services.ask)(
                conversation=self.conversation, question=text, client_id=client_id
            )
        except services.TutoringError as exc:
            await self.send_json({"type": "error", "error": str(exc)})
            return
        await self.send_json(
            {
                "type": "question",
                "message": serialise(asked.question),
                "answer": serialise(asked.answer),
                "repeat": not asked.created,
            }
        )
        if asked.answer.is_finished():  # a repeat, or a question the material doesn't cover
            await self.send_json({"type": "done", "message": serialise(asked.answer)})
        elif asked.created:
            self.watchdog = asyncio.ensure_future(self._watch(asked.answer.pk))

    async def _watch(self, message_id: int) -> None:
        """A worker that dies sends nothing more: tell the student, don't hang.

        A question waits for a free worker up to TUTOR_WORKER_START_SECONDS (others may be
        answered first); once a worker has started on it, a silence of
        TUTOR_WORKER_SILENCE_SECONDS between its frames means it is gone.
        """
        self.started = False
        self.last_activity = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            limit = (
                settings.TUTOR_WORKER_SILENCE_SECONDS
                if self.started
                else settings.TUTOR_WORKER_START_SECONDS
            )
            if time.monotonic() - self.last_activity < limit:
                continue
            reason = (
                "the tutor's language model stopped responding; please ask again"
                if self.started
                else "no language model was free to answer; please ask again in a moment"
            )
            if await database_sync_to_async(services.fail_if_unfinished)(
                message_id=message_id, reason=reason
            ):
                logger.error(
                    "message %s: no word from a worker for %ss (%s)",
                    message_id,
                    limit,
                    "started" if self.started else "never started",
                )
                message = await database_sync_to_async(Message.objects.get)(pk=message_id)
                await self.send_json({"type": "done", "message": serialise(message)})
            return

    # Group messages from the inference worker ("chat.token" -> chat_token).
    async def chat_started(self, event: dict[str, Any]) -> None:
        """A worker has taken the question (the prompt is being read)."""
        self.started = True
        self.last_activity = time.monotonic()
        message_id = await self._message_id(event["request_id"])
        await self.send_json({"type": "started", "message_id": message_id})

    async def chat_alive(self, event: dict[str, Any]) -> None:
        """The worker is still reading the prompt: not dead, only slow."""
        self.started = True
        self.last_activity = time.monotonic()

    async def chat_token(self, event: dict[str, Any]) -> None:
        self.started = True
        self.last_activity = time.monotonic()
        message_id = await self._message_id(event["request_id"])
        await self.send_json({"type": "token", "message_id": message_id, "text": event["text"]})

    async def chat_support(self, event: dict[str, Any]) -> None:
        """The support check of sentences just completed: each is marked where it stands."""
        self.last_activity = time.monotonic()
        message_id = await self._message_id(event["request_id"])
        await self.send_json({"type": "support", "message_id": message_id, "marks": event["marks"]})

    async def chat_done(self, event: dict[str, Any]) -> None:
        grading = self.gradings.pop(event.get("request_id", ""), None)
        if grading is not None:  # a short answer's grade, on our own reply channel
            check_id, timer, similarity = grading
            timer.cancel()
            text = event.get("text", "") if event.get("status") in ("complete", "length") else ""
            await self._finish_check(check_id, checks.parse_grade(text, similarity))
            return
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        message = await self._finished(event)
        if message is not None:
            await self.send_json({"type": "done", "message": serialise(message)})
            offered = await self._offer(message)
            if offered is not None:
                await self.send_json({"type": "check", "check": offered})

    async def chat_graded(self, event: dict[str, Any]) -> None:
        """A check of this conversation was graded (in this tab or another)."""
        check, mastery = await self._graded(event["check"])
        await self.send_json({"type": "graded", "check": check, "mastery": mastery})

    # --- check questions ----------------------------------------------------------------------

    async def _answer(self, check_id: int, text: str) -> None:
        try:
            check = await database_sync_to_async(self._start_response)(check_id, text)
        except checks.CheckError as exc:
            await self.send_json({"type": "error", "error": str(exc), "check": check_id})
            return
        if check.item.kind == Item.Kind.MULTIPLE_CHOICE:
            grade = checks.grade_choice(check.item, check.response)
            await self._finish_check(check.pk, grade)
            return
        settled, similarity = await database_sync_to_async(services.settle_short_answer)(check)
        if settled is not None:
            await self._finish_check(check.pk, settled)
            return
        request_id = str(uuid.uuid4())
        timer = asyncio.ensure_future(self._grading_timeout(request_id, check.pk, similarity))
        self.gradings[request_id] = (check.pk, timer, similarity)
        await self.channel_layer.send(
            services.INFERENCE_CHANNEL,
            {
                "type": "generate",
                "request_id": request_id,
                "group": "",
                "reply_channel": self.channel_name,
                "message_id": None,
                "messages": checks.grading_messages(check.item, check.response),
                "max_tokens": checks.GRADING_TOKENS,
                "temperature": 0.0,
                "time_limit": settings.TUTOR_ANSWER_SECONDS,
            },
        )

    async def _grading_timeout(self, request_id: str, check_id: int, similarity: float) -> None:
        """No grade from a worker in time: grade by meaning, so the learner is not left waiting."""
        await asyncio.sleep(settings.TUTOR_WORKER_SILENCE_SECONDS)
        if self.gradings.pop(request_id, None) is None:
            return
        logger.warning("check %s: no grade from a worker; graded by meaning", check_id)
        await self._finish_check(check_id, checks.parse_grade("", similarity))

    async def _finish_check(self, check_id: int, grade: checks.Grade) -> None:
        await database_sync_to_async(self._record)(check_id, grade)
        await self.channel_layer.group_send(self.group, {"type": "chat.graded", "check": check_id})

    def _start_response(self, check_id: int, text: str) -> Check:
        check = (
            Check.objects.select_related("item__skill", "conversation")
            .filter(pk=check_id, conversation=self.conversation)
            .first()
        )
        if check is None:
            raise checks.CheckError("no such check question in this conversation")
        return services.start_check_response(
            check=check, learner=self.conversation.learner, response=text
        )

    def _record(self, check_id: int, grade: checks.Grade) -> None:
        check = Check.objects.select_related("item__skill", "conversation__learner").get(
            pk=check_id
        )
        services.finish_check(check=check, grade=grade)

    @database_sync_to_async
    def _offer(self, answer: Message) -> dict[str, Any] | None:
        try:
            check = services.offer_check(answer=answer)
        except Exception:  # a check question is a bonus: never let it break the chat
            logger.exception("no check question after message %s", answer.pk)
            return None
        return services.check_json(check) if check is not None else None

    @database_sync_to_async
    def _graded(self, check_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
        check = Check.objects.select_related("item__skill__course", "conversation__learner").get(
            pk=check_id
        )
        found = services.check_json(check)
        skill = check.item.skill
        p_known = found["mastery"]
        mastery = {
            "skill_id": skill.pk,
            "skill": skill.name,
            "p_known": p_known,
            "mode": mode_for(p_known, skill.course),
        }
        return found, mastery

    @database_sync_to_async
    def _finished(self, event: dict[str, Any]) -> Message | None:
        # The worker saved it already (it does not rely on any tab being open).
        return Message.objects.filter(request_id=event["request_id"]).first()

    @database_sync_to_async
    def _message_id(self, request_id: str) -> int | None:
        cached = getattr(self, "_ids", {})
        if request_id not in cached:
            found = Message.objects.filter(request_id=request_id).values_list("pk", flat=True)
            cached[request_id] = found.first()
            self._ids = cached
        return cached[request_id]

    @database_sync_to_async
    def _conversation(self, conversation_id: int, user_id: int) -> Conversation | None:
        conversation = (
            Conversation.objects.select_related("course", "learner")
            .filter(pk=conversation_id, learner_id=user_id)
            .first()
        )
        if conversation is None or not conversation.course.has_member(conversation.learner):
            return None
        return conversation

    @database_sync_to_async
    def _history(self, after: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        messages = [serialise(m) for m in self.conversation.messages.filter(id__gt=after)]
        # An answer that finished while no tab was open has had no check question yet.
        last = self.conversation.messages.filter(role=Message.Role.ASSISTANT).last()
        if last is not None and last.is_finished():
            try:
                services.offer_check(answer=last)
            except Exception:
                logger.exception("no check question after message %s", last.pk)
        offered = [
            services.check_json(check)
            for check in self.conversation.checks.select_related(
                "item__skill", "conversation__learner"
            )
        ]
        return messages, offered

    @database_sync_to_async
    def _allowed(self) -> bool:
        return services.allow_question(self.conversation.learner_id)
