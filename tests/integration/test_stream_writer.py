"""StreamWriter (meshcast.bus.writer) against a real nats-server: a batch stored in order, once."""

from __future__ import annotations

from nats.js.api import StreamConfig
from nats.js.errors import NoStreamResponseError

from meshcast.bus import close, connect
from meshcast.bus.writer import Outgoing, StreamWriter
from meshcast.testing import within


async def test_a_batch_is_stored_in_order_and_a_retry_stores_nothing_twice(nats_url: str) -> None:
    nc = await connect(nats_url, name="writer-test")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="W", subjects=["w.>"], duplicate_window=60))
    writer = StreamWriter(nc)
    await writer.start()
    try:
        batch = [Outgoing(f"w.{n % 3}", str(n).encode(), f"id-{n}") for n in range(500)]
        first = await within(writer.write(batch, ack_wait=5))
        assert (first.stored, first.error) == (500, None)
        nothing = await within(writer.write([], ack_wait=1))
        assert (nothing.stored, nothing.error) == (0, None)
        # Sent again (the same ids) with one more: only the new one is stored.
        again = await within(writer.write([*batch[100:200], Outgoing("w.x", b"new", "id-new")], ack_wait=5))
        assert (again.stored, again.error) == (101, None)
        info = await js.stream_info("W")
        assert info.state.messages == 501
        stored = [(await js.get_msg("W", seq)).data for seq in range(1, 502)]
        assert stored == [str(n).encode() for n in range(500)] + [b"new"]
    finally:
        await writer.stop()
        await close(nc, 2)


async def test_without_a_stream_nothing_is_stored_and_the_writer_says_why(nats_url: str) -> None:
    nc = await connect(nats_url, name="writer-test")
    writer = StreamWriter(nc)
    await writer.start()
    try:
        written = await within(writer.write([Outgoing("nowhere.a", b"x", "a"), Outgoing("nowhere.b", b"y", "b")], 5))
        assert written.stored == 0
        assert isinstance(written.error, NoStreamResponseError)
    finally:
        await writer.stop()
        await close(nc, 2)
