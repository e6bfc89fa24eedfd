"""examples/chat/backend.py as a subprocess, met by unmodified centrifuge-python clients:
moderation on publish, the who rpc, a welcome on subscribe, "left" when a client goes
(`make run EXAMPLE=chat` itself: test_example_chat_run.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator

import pytest
from centrifuge import ReplyError

from meshcast.common.natsauth import BACKEND, inbox_prefix
from meshcast.testing import timeout, wait_until, within
from meshcast.testing.spawn import spawn

from .backendstack import BackendStack, backend_stack
from .conftest import ROOT
from .sdk import connected, disconnected, sdk_client, subscribed

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "examples" / "chat"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendStack]:
    workdir = tmp_path_factory.mktemp("example-chat")
    with backend_stack(workdir, (EXAMPLE / "namespaces.yaml").read_text()) as started:
        yield started


class Example:
    """The example backend as `make run` starts it: a script, user `backend`, its log in a file."""

    def __init__(self, stack: BackendStack) -> None:
        self.log = stack.workdir / "chat.log"
        env = {
            **os.environ,
            "MESHCAST_NATS_URL": stack.url(BACKEND),
            "MESHCAST_NATS_INBOX_PREFIX": inbox_prefix(BACKEND),
        }
        with self.log.open("ab") as out:
            self.proc = spawn([sys.executable, str(EXAMPLE / "backend.py")], env=env, stdout=out, stderr=out)
        wait_until(lambda: "backend started" in self.text() or self.proc.poll() is not None, 15, "the chat backend")
        assert self.proc.poll() is None, self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout(15))


@pytest.fixture(scope="module")
def example(stack: BackendStack) -> Iterator[Example]:
    backend = Example(stack)
    try:
        yield backend
    finally:
        if backend.proc.poll() is None:
            backend.proc.kill()
            backend.proc.wait(timeout(5))


def system(text: str) -> dict[str, str]:
    return {"system": text}


async def test_welcome_moderation_who_and_left_through_the_example(stack: BackendStack, example: Example) -> None:
    alice, bob = sdk_client(stack.ws, "alice"), sdk_client(stack.ws, "bob")
    await connected(alice, bob)
    try:
        at_alice = await subscribed(alice, "chat:index")
        assert await at_alice.next(10) == system("welcome, alice")
        at_bob = await subscribed(bob, "chat:index")
        assert await at_bob.next(10) == system("welcome, bob")
        assert await at_alice.next(10) == system("welcome, bob")

        await within(alice.publish("chat:index", {"text": "oh darn, hello"}))
        assert await at_bob.next() == {"text": "oh ****, hello"}
        assert await at_alice.next() == {"text": "oh ****, hello"}
        for message, code in (({"text": "BUY NOW cheap"}, 103), ({"text": " "}, 107), ("just a string", 107)):
            with pytest.raises(ReplyError) as refused:
                await within(alice.publish("chat:index", message))
            assert refused.value.code == code, message

        who = await within(bob.rpc("who", {"channel": "chat:index"}))
        assert who.data == {"channel": "chat:index", "users": ["alice", "bob"]}
        with pytest.raises(ReplyError) as refused:
            await within(bob.rpc("who", {"channel": "elsewhere"}))
        assert refused.value.code == 107
    finally:
        await disconnected(bob)
    try:
        assert await at_alice.next(10) == system("bob left")
        who = await within(alice.rpc("who", {}))
        assert who.data == {"channel": "chat:index", "users": ["alice"]}
    finally:
        await disconnected(alice)


async def test_sigterm_drains_the_example_and_it_exits_0(stack: BackendStack, example: Example) -> None:
    carol = sdk_client(stack.ws, "carol")
    await connected(carol)
    try:
        await subscribed(carol, "chat:quiet")
    finally:
        await disconnected(carol)
    assert await asyncio.to_thread(example.stop) == 0
    assert "backend stopped" in example.text()
