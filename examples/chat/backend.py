"""The chat backend of `make run EXAMPLE=chat`: a Meshcast backend written with
meshcast.backend only.

- publish moderation (namespace `chat` has ``proxy_publish``): a message is a
  JSON object with a non-empty "text" of at most 500 characters; spam is
  refused (error 103), mild words are masked before anyone sees them;
- subscribe (``proxy_subscribe``): signed-in users only; the subscriber's
  channel info says when they joined;
- the ``who`` rpc: the users present in a chat channel (default `chat:index`);
- lifecycle events, from its durable consumer: "welcome, <user>" in the room
  when someone subscribes, "<user> left" when they leave it (their
  unsubscribe: one per room they were in, told before their disconnect, also
  when their gateway died). Stateless, so a restarted or second replica says
  the same, and what happened while it was down is told when it is back.

Run it against any Meshcast: ``MESHCAST_NATS_URL=$(make -s nats-url) python backend.py``
(the `backend` NATS user; the gateways' namespaces must delegate as
examples/chat/namespaces.yaml does).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from meshcast.backend import (
    Backend,
    ErrorCode,
    LifecycleEvent,
    Publish,
    PublishRequest,
    Reject,
    RPCRequest,
    Subscribe,
    SubscribeRequest,
)

NAMESPACE = "chat:"
MAX_TEXT = 500
SPAM = ("buy now", "free money")
MASKED = re.compile(r"\b(darn|heck)\b", re.IGNORECASE)

app = Backend.from_env("chat-bot", history_namespaces=("chat",))


def _object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data) if data else {}
    except ValueError:
        raise Reject(ErrorCode.BAD_REQUEST, "a chat message is JSON") from None
    if not isinstance(value, dict):
        raise Reject(ErrorCode.BAD_REQUEST, "a chat message is a JSON object")
    return value


@app.on_publish
async def moderate(request: PublishRequest) -> Publish | None:
    message = _object(request.data)
    text = message.get("text")
    if not isinstance(text, str) or not text.strip():
        raise Reject(ErrorCode.BAD_REQUEST, "a chat message has a text")
    if len(text) > MAX_TEXT:
        raise Reject(ErrorCode.BAD_REQUEST, f"at most {MAX_TEXT} characters")
    if any(spam in text.lower() for spam in SPAM):
        raise Reject(ErrorCode.PERMISSION_DENIED, "looks like spam")
    cleaned = MASKED.sub(lambda word: "*" * len(word.group()), text)
    if cleaned == text:
        return None  # published as sent
    return Publish(json.dumps({**message, "text": cleaned}).encode())


@app.on_subscribe
async def admit(request: SubscribeRequest) -> Subscribe:
    if not request.user:
        raise Reject(ErrorCode.PERMISSION_DENIED, "sign in to chat")
    return Subscribe(info=json.dumps({"joined_at": int(time.time())}).encode())


@app.rpc("who")
async def who(request: RPCRequest) -> bytes:
    channel = _object(request.data).get("channel", f"{NAMESPACE}index")
    if not isinstance(channel, str) or not channel.startswith(NAMESPACE):
        raise Reject(ErrorCode.BAD_REQUEST, f"a channel of namespace {NAMESPACE!r}")
    members = await app.presence(channel)
    users = sorted({member.user for member in members.values()})
    return json.dumps({"channel": channel, "users": users}).encode()


@app.on_event("subscribe", "unsubscribe")
async def announce(event: LifecycleEvent) -> None:
    if not event.channel.startswith(NAMESPACE) or not event.user:
        return
    text = f"welcome, {event.user}" if event.kind == "subscribe" else f"{event.user} left"
    await app.publish(event.channel, json.dumps({"system": text}).encode())


if __name__ == "__main__":
    app.run()
