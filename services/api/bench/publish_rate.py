"""Publish requests/s through one API process (HTTP, keep-alive), and latency at a fixed rate.

    .venv/bin/python services/api/bench/publish_rate.py [--channel lobby] [--seconds 5] [--concurrency 32]

Starts nats-server, history, presence, one gateway and one API process (real
subprocesses, ports chosen by the OS), then: as many publishes as
`--concurrency` keep-alive connections get through in `--seconds`; the p50/p99
latency at `--rate` requests/s; and batches of 100 publishes per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

from meshcast.testing import NatsServer, api_process, gateway_process, history_process, presence_process

ROOT = Path(__file__).resolve().parents[3]
NAMESPACES = ROOT / "tests" / "e2e" / "namespaces.yaml"
KEY = "bench-key-0123456789"


async def _flat_out(url: str, body: bytes, seconds: float, concurrency: int) -> tuple[int, list[float]]:
    headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
    done = 0
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    assert resp.status == 200
                latencies.append(time.perf_counter() - started)
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, latencies


async def _at_rate(url: str, body: bytes, seconds: float, rate: float) -> list[float]:
    headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
    latencies: list[float] = []
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one() -> None:
            started = time.perf_counter()
            async with session.post(url, data=body) as resp:
                await resp.read()
            latencies.append(time.perf_counter() - started)

        tasks = []
        start = time.perf_counter()
        for i in range(int(seconds * rate)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) > 1 else 0.0


async def run(base: str, channel: str, seconds: float, concurrency: int, rate: float, api_pid: int) -> None:
    body = json.dumps({"channel": channel, "data": {"text": "hello"}}).encode()
    api = psutil.Process(api_pid)
    cpu_before = sum(api.cpu_times()[:2])
    n, lat = await _flat_out(f"{base}/publish", body, seconds, concurrency)
    api_cpu = (sum(api.cpu_times()[:2]) - cpu_before) / seconds
    print(f"publish {channel}: {n / seconds:,.0f} requests/s ({concurrency} keep-alive connections)")
    print(f"  the API process used {api_cpu:.0%} of one core meanwhile")
    print(f"  latency under that load: p50 {_pct(lat, 50):.2f} ms, p99 {_pct(lat, 99):.2f} ms")
    lat = await _at_rate(f"{base}/publish", body, seconds, rate)
    print(f"  at {rate:,.0f} requests/s: p50 {_pct(lat, 50):.2f} ms, p99 {_pct(lat, 99):.2f} ms")
    commands = [{"publish": {"channel": channel, "data": {"i": i}}} for i in range(100)]
    batch = json.dumps({"commands": commands}).encode()
    n, lat = await _flat_out(f"{base}/batch", batch, seconds, max(1, concurrency // 4))
    print(f"batch of 100: {n / seconds:,.0f} requests/s = {100 * n / seconds:,.0f} publishes/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channel", default="lobby")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=1000.0)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        nats = NatsServer(workdir / "nats").start()
        procs = [
            history_process(workdir, [nats.url], namespaces_file=NAMESPACES),
            presence_process(workdir, [nats.url]),
            gateway_process(workdir, [nats.url], secret="b" * 32, namespaces_file=NAMESPACES),
            api_process(workdir, [nats.url], namespaces_file=NAMESPACES, api_key=KEY),
        ]
        started = []
        try:
            for proc in procs:
                started.append(proc.start(wait=30))
            base = f"http://127.0.0.1:{procs[-1].env['_HTTP_PORT']}/api"
            api = procs[-1].process
            assert api is not None
            asyncio.run(run(base, opts.channel, opts.seconds, opts.concurrency, opts.rate, api.pid))
        finally:
            for proc in reversed(started):
                proc.terminate()
            nats.stop()


if __name__ == "__main__":
    main()
