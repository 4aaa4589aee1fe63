"""The chat websocket: protocol only; every write goes through tutoring.services.

Frames from the browser (JSON):
    {"type": "ask", "text": "...", "client_id": "..."}   a question (a resend is not a second)
    {"type": "stop"}                                      stop the answer being written
Frames to the browser:
    {"type": "history", "messages": [...]}                on connect: what it missed
    {"type": "question", "message": {...}}                the saved question, with its answer's id
    {"type": "token", "message_id": n, "text": "..."}     streamed text (several tokens a frame)
    {"type": "done", "message": {...}}                    the finished answer, saved
    {"type": "error", "error": "..."}                     a refusal or a failure, in words
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.core.cache import cache

from tutoring import services
from tutoring.models import Conversation, Message

logger = logging.getLogger(__name__)

# Close codes (4000-4999 are ours).
FORBIDDEN = 4403
NOT_FOUND = 4404
TOO_BIG = 1009


def serialise(message: Message) -> dict[str, Any]:
    return {
        "id": message.pk,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "error": message.error,
        "mode": message.mode,
        "mode_reason": message.mode_reason,
        "citations": message.citations,
        "client_id": message.client_id,
        "ttft_ms": message.ttft_ms,
        "total_ms": message.total_ms,
    }


class ChatConsumer(AsyncJsonWebsocketConsumer):
    conversation: Conversation
    watchdog: asyncio.Task[None] | None = None

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
        await self.send_json({"type": "history", "messages": await self._history(after)})

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if self.watchdog is not None:
            self.watchdog.cancel()

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
        if asked.created:
            self.watchdog = asyncio.ensure_future(self._watch(asked.answer.pk))
        elif asked.answer.is_finished():
            await self.send_json({"type": "done", "message": serialise(asked.answer)})

    async def _watch(self, message_id: int) -> None:
        """A worker that dies mid-answer sends nothing more: tell the student, don't hang."""
        self.last_activity = time.monotonic()
        limit = settings.TUTOR_WORKER_SILENCE_SECONDS
        while True:
            await asyncio.sleep(1.0)
            if time.monotonic() - self.last_activity < limit:
                continue
            reason = "the tutor's language model stopped responding; please ask again"
            if await database_sync_to_async(services.fail_if_unfinished)(
                message_id=message_id, reason=reason
            ):
                logger.error("message %s: no word from a worker for %ss", message_id, limit)
                message = await database_sync_to_async(Message.objects.get)(pk=message_id)
                await self.send_json({"type": "done", "message": serialise(message)})
            return

    # Group messages from the inference worker ("chat.token" -> chat_token).
    async def chat_token(self, event: dict[str, Any]) -> None:
        self.last_activity = time.monotonic()
        message_id = await self._message_id(event["request_id"])
        await self.send_json({"type": "token", "message_id": message_id, "text": event["text"]})

    async def chat_done(self, event: dict[str, Any]) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        message = await self._finished(event)
        if message is not None:
            await self.send_json({"type": "done", "message": serialise(message)})

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
    def _history(self, after: int) -> list[dict[str, Any]]:
        return [serialise(m) for m in self.conversation.messages.filter(id__gt=after)]

    @database_sync_to_async
    def _allowed(self) -> bool:
        """A per-learner rate limit on questions (a fixed one-minute window)."""
        key = f"tutor:ask-rate:{self.conversation.learner_id}:{int(time.time() // 60)}"
        cache.add(key, 0, timeout=120)
        try:
            count = cache.incr(key)
        except ValueError:
            count = 1
        return count <= settings.TUTOR_QUESTIONS_PER_MINUTE
