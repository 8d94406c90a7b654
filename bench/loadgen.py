"""The load generator of bench.pipeline: HTTP/1.1 POSTs over a fixed pool of keep-alive
connections, closed-loop (N workers, each sends its next request when the last one is
answered: the server's maximum rate) or open-loop (requests start at their scheduled times
whatever the answers do: latency at an offered rate, measured from the scheduled time so
that a slow server cannot hide its queue behind a slow client).

Two clients with the same interface: ``RawClient`` (default: asyncio streams, the request
bytes written as they are, the answer read by its Content-Length; the cheapest client there
is in Python, so the generator takes as little as possible of the CPUs it shares with the
stack) and ``HttpxClient`` (httpx.AsyncClient with the same pool size), chosen with
BENCH_CLIENT=raw|httpx. Both keep at most ``connections`` requests in flight; requests beyond
that wait for a connection, inside the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

REQUEST_TIMEOUT_S = 120.0


class Client(Protocol):
    async def post(self, path: str, body: bytes) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


class HttpError(Exception):
    pass


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class RawClient:
    """``connections`` kept-open HTTP/1.1 connections to one host; a request takes a free
    one (or waits for one), writes its bytes and reads the answer by Content-Length."""

    def __init__(self, host: str, port: int, headers: dict[str, str], connections: int) -> None:
        self.host, self.port, self.size = host, port, connections
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._head = f"Host: {host}:{port}\r\nContent-Type: application/json\r\n{extra}"
        self._free: asyncio.Queue[_Connection | None] = asyncio.Queue()
        for _ in range(connections):
            self._free.put_nowait(None)  # opened on first use

    async def _open(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return _Connection(reader, writer)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        conn = await self._free.get()
        try:
            for attempt in (1, 2):
                fresh = conn is None
                if conn is None:
                    conn = await self._open()
                request = (
                    f"POST {path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n\r\n"
                ).encode() + body
                try:
                    conn.writer.write(request)
                    return await asyncio.wait_for(self._read(conn), REQUEST_TIMEOUT_S)
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    # The server closed an idle keep-alive connection: open another, once.
                    conn.close()
                    conn = None
                    if fresh or attempt == 2:
                        raise HttpError(f"connection failed: {exc!r}") from exc
            raise AssertionError("unreachable")
        except BaseException:
            if conn is not None:
                conn.close()
            conn = None
            raise
        finally:
            self._free.put_nowait(conn)

    async def _read(self, conn: _Connection) -> tuple[int, bytes]:
        head = await conn.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = None
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "connection" and value.strip().lower() == "close":
                close = True
            elif name == "transfer-encoding":
                raise HttpError("chunked answers are not supported by the raw client")
        body = await conn.reader.readexactly(length) if length else b""
        if close:
            conn.close()
            raise ConnectionResetError("server closed the connection after answering")
        return status, body

    async def aclose(self) -> None:
        while not self._free.empty():
            conn = self._free.get_nowait()
            if conn is not None:
                conn.close()


class HttpxClient:
    def __init__(self, host: str, port: int, headers: dict[str, str], connections: int) -> None:
        import httpx

        self.size = connections
        self._client = httpx.AsyncClient(
            base_url=f"http://{host}:{port}",
            headers={"Content-Type": "application/json", **headers},
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, pool=None),
        )

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        response = await self._client.post(path, content=body)
        return response.status_code, response.content

    async def aclose(self) -> None:
        await self._client.aclose()


def make_client(
    kind: str, host: str, port: int, headers: dict[str, str], connections: int
) -> Client:
    if kind == "httpx":
        return HttpxClient(host, port, headers, connections)
    if kind == "raw":
        return RawClient(host, port, headers, connections)
    raise ValueError(f"BENCH_CLIENT must be raw or httpx, not {kind!r}")


# --- closed loop -------------------------------------------------------------------------


@dataclass
class ClosedResult:
    connections: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)  # answered 2xx
    statuses: dict[str, int] = field(default_factory=dict)
    client_cpu_s: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


async def closed_loop(
    client: Client,
    path: str,
    next_body: Callable[[], bytes],
    connections: int,
    warmup_s: float,
    seconds: float,
    on_answer: Callable[[int, bytes], None] | None = None,
) -> ClosedResult:
    """``connections`` workers send back to back for warmup_s (not counted), then for
    ``seconds``: every answer that arrives in the measured window counts."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup_s
    stop_at = measure_from + seconds
    result = ClosedResult(connections, seconds)
    cpu = [0.0]

    async def worker() -> None:
        while (now := loop.time()) < stop_at:
            body = next_body()
            try:
                status, answer = await client.post(path, body)
            except HttpError as exc:
                status, answer = 0, str(exc).encode()
            done = loop.time()
            if on_answer is not None:
                on_answer(status, answer)
            if now >= measure_from and done <= stop_at:
                key = str(status)
                result.statuses[key] = result.statuses.get(key, 0) + 1
                if 200 <= status < 300:
                    result.latencies_ms.append((done - now) * 1000)

    async def cpu_window() -> None:
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        c0 = time.process_time()
        await asyncio.sleep(max(0.0, stop_at - loop.time()))
        cpu[0] = time.process_time() - c0

    await asyncio.gather(cpu_window(), *(worker() for _ in range(connections)))
    result.client_cpu_s = cpu[0]
    return result


# --- open loop ---------------------------------------------------------------------------


@dataclass
class Sent:
    index: int
    scheduled_wall: float  # time.time() at which the request was due
    lag_ms: float  # how late the generator started it (its own delay, not the server's)
    status: int = -1  # -1: no answer yet (cancelled at the end)
    answered_ms: float | None = None  # scheduled -> answer, client queueing included
    answer: bytes = b""


@dataclass
class OpenResult:
    rate: float
    seconds: float
    sent: list[Sent]
    send_seconds: float  # first to last start
    client_cpu_s: float  # this process during the sending window


async def open_loop(
    client: Client,
    path: str,
    next_body: Callable[[], bytes],
    rate: float,
    seconds: float,
    tasks: list[asyncio.Task[None]],
) -> OpenResult:
    """Start request i at t0 + i/rate for ``seconds``, each in its own task (appended to
    ``tasks``, so the caller can wait for the answers or cancel the rest); returns when the
    last request has been started."""
    loop = asyncio.get_running_loop()
    count = max(1, round(rate * seconds))
    t0 = loop.time() + 0.05
    wall0 = time.time() + (t0 - loop.time())
    sent: list[Sent] = []

    async def one(record: Sent, due: float) -> None:
        body = next_body()
        record.lag_ms = max(0.0, (loop.time() - due) * 1000)
        try:
            status, answer = await client.post(path, body)
        except HttpError as exc:
            status, answer = 0, str(exc).encode()
        record.answered_ms = (loop.time() - due) * 1000
        record.status, record.answer = status, answer

    c0 = time.process_time()
    first = last = 0.0
    i = 0
    while i < count:
        now = loop.time()
        while i < count and t0 + i / rate <= now:
            due = t0 + i / rate
            record = Sent(i, wall0 + i / rate, 0.0)
            sent.append(record)
            tasks.append(asyncio.create_task(one(record, due)))
            if i == 0:
                first = now
            last = now
            i += 1
        if i < count:
            await asyncio.sleep(max(0.0, min(0.005, t0 + i / rate - loop.time())))
    return OpenResult(rate, seconds, sent, last - first, time.process_time() - c0)
