"""The raw HTTP ceiling: the consumer's bodies posted to the ERP stub without Kafka, per transport.

Transports (``--transport``):

* ``erp-client-async``: exactly how ``erp-sync run`` pushes — one asyncio event loop, one
  :class:`consumer.erp.client.ErpClient` (settings from :func:`consumer.settings.load_settings` with
  ``ERP_SYNC_ERP_URL`` = the stub, ``max_connections`` = ``--concurrency``), every request a task
  doing ``await client.post_async(body, key)`` under an ``asyncio.Semaphore(--concurrency)``, as
  :class:`consumer.delivery.dispatch.KeyedDispatcher` does (aiohttp's client used directly by
  :class:`consumer.erp.http.AiohttpSender`, the same limits, headers and verdict parsing). This is
  the ceiling ``erp-sync run`` is compared with.
* ``erp-client-threads``: the previous design — ``--concurrency`` threads sharing one
  ``httpx.Client`` (the consumer's connection limits), a synchronous ``post`` per record, every
  answer read by the consumer's :func:`consumer.erp.verdict.verdict`.
* ``httpx-threads``: the same thread pool and client, the answer only checked for 200 with a body
  (no verdict parsing).
* ``httpx-thread-local``: the same thread pool, but one ``httpx.Client`` (pool of one connection)
  per thread: no shared connection pool, so none of httpcore's pool lock and per-request scan of
  every pooled connection.
* ``httpx-async``: ``httpx.AsyncClient``, ``--concurrency`` asyncio tasks.
* ``httpx-aiohttp``: ``httpx.AsyncClient`` over the aiohttp transport of the ``httpx-aiohttp``
  package (skipped when it is not installed).
* ``aiohttp``: a raw ``aiohttp.ClientSession``, ``--concurrency`` tasks.

Each worker posts bodies round-robin; the answers that arrive in the ``--seconds`` after a
``--warmup`` are counted. Prints one JSON line: requests/s, client CPU µs per request (this process,
all threads), errors.

    python -m bench.http_ceiling --url http://127.0.0.1:8080/erp/push --transport erp-client-async \
        --concurrency 32 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from consumer import decode as events
from consumer import transform
from consumer.devstack import samples
from consumer.devstack.events import encode
from consumer.erp import client as erp
from consumer.erp.verdict import Outcome, verdict
from consumer.settings import load_settings

TRANSPORTS = ("erp-client-async", "erp-client-threads", "httpx-threads", "httpx-thread-local", "httpx-async",
              "httpx-aiohttp", "aiohttp")
CEILING_TRANSPORT = "erp-client-async"
"""The transport of "fraction of the HTTP ceiling": the consumer's own client and concurrency."""
DESCRIPTIONS = {
    "erp-client-async": "the consumer's way: one event loop, one ErpClient, await post_async under a Semaphore "
                        "(aiohttp's client used directly, consumer/erp/http.py)",
    "erp-client-threads": "previous design: threads sharing one httpx.Client, sync post, the consumer's verdict",
    "httpx-threads": "threads sharing a bare httpx.Client",
    "httpx-thread-local": "threads, one httpx.Client each",
    "httpx-async": "httpx.AsyncClient, default transport",
    "httpx-aiohttp": "bare httpx.AsyncClient over httpx-aiohttp",
    "aiohttp": "raw aiohttp.ClientSession",
}
HEADERS = {"Content-Type": "application/json; charset=utf-8", "Accept": "application/json"}


def make_bodies(count: int, seed: int = 1) -> list[tuple[bytes, str]]:
    """The ERP bodies and Idempotency-Keys of the approved events among ``count`` generated ones."""
    out = []
    for event in samples.generate_events(count, seed=seed, approved_ratio=0.5, distinct_instances=10_000,
                                         target_bytes=300):
        decoded = events.decode(encode(event))
        if transform.is_pushed(decoded):
            out.append(transform.erp_request(decoded))
    return out


class _Counter:
    """Counts the answers that arrive inside the measured window (and all of them, for CPU per request)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.errors = 0
        self.all = 0  # warm-up and tail included (for CPU per request)
        self.opens = self.closes = float("inf")

    def open_window(self, warmup_s: float, seconds: float) -> float:
        """Count from ``warmup_s`` from now for ``seconds``; returns how long to wait for the window to close."""
        self.opens = time.perf_counter() + warmup_s
        self.closes = self.opens + seconds
        return warmup_s + seconds

    @property
    def seconds(self) -> float:
        """The length of the measured window."""
        return self.closes - self.opens

    def add(self, ok: bool) -> None:
        now = time.perf_counter()
        with self.lock:
            self.all += 1
            if not self.opens <= now < self.closes:
                return
            if ok:
                self.ok += 1
            else:
                self.errors += 1


def _run_threads(post: Callable[[bytes, str], bool], bodies: list[tuple[bytes, str]], concurrency: int,
                 warmup_s: float, seconds: float, counter: _Counter) -> None:
    stop = threading.Event()
    source = itertools.cycle(bodies)
    source_lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            with source_lock:
                body, key = next(source)
            counter.add(post(body, key))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(counter.open_window(warmup_s, seconds))
    stop.set()
    for t in threads:
        t.join(30)


async def _run_tasks(post: Callable[[bytes, str], Any], bodies: list[tuple[bytes, str]], concurrency: int,
                     warmup_s: float, seconds: float, counter: _Counter) -> None:
    stop = asyncio.Event()
    source = itertools.cycle(bodies)

    async def worker() -> None:
        while not stop.is_set():
            body, key = next(source)
            counter.add(await post(body, key))

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(counter.open_window(warmup_s, seconds))
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _run_erp_client_async(client: erp.ErpClient, bodies: list[tuple[bytes, str]], concurrency: int,
                                warmup_s: float, seconds: float, counter: _Counter) -> None:
    """The consumer's push path: a task per request, ``await client.post_async`` under a semaphore.

    Like :class:`consumer.delivery.dispatch.KeyedDispatcher`: one event loop, ``asyncio.Semaphore(concurrency)``
    around each push, one task created per push (the dispatcher creates one per key chain). A
    feeder keeps ``2 x concurrency`` tasks alive, so the semaphore always has waiters, as it has
    in the consumer with thousands of buffered records.
    """
    semaphore = asyncio.Semaphore(concurrency)
    room = asyncio.Semaphore(2 * concurrency)
    stop = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def push(body: bytes, key: str) -> None:
        try:
            async with semaphore:
                result = await client.post_async(body, key)
            counter.add(result.outcome is Outcome.ACCEPTED)
        finally:
            room.release()

    async def feed() -> None:
        for body, key in itertools.cycle(bodies):
            await room.acquire()
            if stop.is_set():
                room.release()
                return
            task = asyncio.create_task(push(body, key))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    feeder = asyncio.create_task(feed())
    await asyncio.sleep(counter.open_window(warmup_s, seconds))
    stop.set()
    await feeder
    if tasks:
        await asyncio.wait(list(tasks), timeout=30)
    await client.aclose()


def _limits(concurrency: int) -> httpx.Limits:
    # the same limits as consumer/erp/client.py
    return httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency,
                        keepalive_expiry=erp.KEEPALIVE_EXPIRY_S)


def _accepted(response: httpx.Response) -> bool:
    """The consumer's reading of an answer (:func:`consumer.erp.verdict.verdict`)."""
    return verdict(response.status_code, response.headers, response.content).outcome is Outcome.ACCEPTED


def _answered(response: httpx.Response) -> bool:
    """A bare client's reading of an answer: 200 with a body."""
    return response.status_code == 200 and bool(response.content)


def _sync_post(client: Callable[[], httpx.Client], url: str,
               judge: Callable[[httpx.Response], bool]) -> Callable[[bytes, str], bool]:
    """A worker's post: ``client()`` gives the ``httpx.Client`` to use, ``judge`` reads the answer."""
    def post(body: bytes, key: str) -> bool:
        try:
            return judge(client().post(url, content=body, headers={"Idempotency-Key": key}))
        except httpx.HTTPError:
            return False

    return post


def measure(url: str, transport: str, concurrency: int, seconds: float, warmup_s: float = 0.5,
            bodies: list[tuple[bytes, str]] | None = None) -> dict[str, Any]:
    """Post for ``seconds`` with one transport; return requests/s and client CPU per request."""
    bodies = bodies or make_bodies(10_000)
    counter = _Counter()
    cpu0 = time.process_time()
    if transport == "erp-client-async":
        settings = load_settings({"ERP_SYNC_ERP_URL": url, "ERP_SYNC_MAX_IN_FLIGHT": str(concurrency)})
        async_client = erp.ErpClient(settings, max_connections=concurrency)
        cpu0 = time.process_time()
        asyncio.run(_run_erp_client_async(async_client, bodies, concurrency, warmup_s, seconds, counter))
    elif transport in ("erp-client-threads", "httpx-threads"):
        # one httpx.Client shared by the threads; erp-client-threads reads each answer as the consumer does
        http = httpx.Client(headers=HEADERS, timeout=10.0, limits=_limits(concurrency))
        judge = _accepted if transport == "erp-client-threads" else _answered
        _run_threads(_sync_post(lambda: http, url, judge), bodies, concurrency, warmup_s, seconds, counter)
        http.close()
    elif transport == "httpx-thread-local":
        local = threading.local()
        clients: list[httpx.Client] = []

        def own_client() -> httpx.Client:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = httpx.Client(headers=HEADERS, timeout=10.0, limits=_limits(1))
                clients.append(client)
            return client

        _run_threads(_sync_post(own_client, url, _answered), bodies, concurrency, warmup_s, seconds, counter)
        for local_client in clients:
            local_client.close()
    elif transport in ("httpx-async", "httpx-aiohttp"):
        async def run_async() -> None:
            kwargs: dict[str, Any] = {"headers": HEADERS, "timeout": 10.0, "limits": _limits(concurrency)}
            if transport == "httpx-aiohttp":
                from httpx_aiohttp import AiohttpTransport

                kwargs["transport"] = AiohttpTransport(limits=_limits(concurrency))
            async with httpx.AsyncClient(**kwargs) as http:
                async def post_async(body: bytes, key: str) -> bool:
                    try:
                        return _answered(await http.post(url, content=body, headers={"Idempotency-Key": key}))
                    except httpx.HTTPError:
                        return False

                await _run_tasks(post_async, bodies, concurrency, warmup_s, seconds, counter)

        asyncio.run(run_async())
    elif transport == "aiohttp":
        import aiohttp

        async def run_aiohttp() -> None:
            connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=erp.KEEPALIVE_EXPIRY_S)
            async with aiohttp.ClientSession(connector=connector, headers=HEADERS,
                                             timeout=aiohttp.ClientTimeout(total=10)) as session:
                async def post_aiohttp(body: bytes, key: str) -> bool:
                    try:
                        async with session.post(url, data=body, headers={"Idempotency-Key": key}) as response:
                            content = await response.read()
                            return response.status == 200 and bool(content)
                    except aiohttp.ClientError:
                        return False

                await _run_tasks(post_aiohttp, bodies, concurrency, warmup_s, seconds, counter)

        asyncio.run(run_aiohttp())
    else:
        raise SystemExit(f"unknown transport {transport!r}; known: {', '.join(TRANSPORTS)}")
    cpu = time.process_time() - cpu0
    elapsed = counter.seconds
    return {
        "transport": transport,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "requests": counter.ok,
        "errors": counter.errors,
        "requests_per_s": counter.ok / elapsed if elapsed else 0.0,
        # CPU of the whole run (warm-up included) over every request sent in it
        "client_cpu_us_per_request": cpu / max(1, counter.all) * 1e6,
    }


def available(transport: str) -> bool:
    """True when the transport's library is installed."""
    if transport == "httpx-aiohttp":
        try:
            import httpx_aiohttp  # noqa: F401
        except ImportError:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the stub's push URL")
    parser.add_argument("--transport", choices=TRANSPORTS, default=CEILING_TRANSPORT)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--bodies", type=int, default=10_000, help="generate bodies from this many events")
    args = parser.parse_args(argv)
    if not available(args.transport):
        print(json.dumps({"transport": args.transport, "concurrency": args.concurrency, "skipped": True,
                          "reason": "not installed"}), flush=True)
        return 0
    result = measure(args.url, args.transport, args.concurrency, args.seconds, args.warmup,
                     make_bodies(args.bodies))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
