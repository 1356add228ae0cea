"""A stand-in upstream for ``upstream.py``: answers every GET with small JSON after a delay.

    python bench/upstream_server.py --port 9000 [--host 127.0.0.1] [--delay-ms 50]

Standard library only (uvloop when importable): plain asyncio streams speaking just enough
HTTP/1.1 for keep-alive clients (wrk, httpx). Every request waits ``--delay-ms`` with
``asyncio.sleep`` and then answers ``200`` with ``{"path": ..., "delay_ms": ...}``, so a
client with N connections can reach at most N / delay requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from collections.abc import Sequence

MAX_HEAD = 64 * 1024


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    return parser.parse_args(argv)


def response(status: str, body: bytes, *, close: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class Upstream:
    def __init__(self, delay_ms: float) -> None:
        self.delay = delay_ms / 1000.0
        self.delay_ms = delay_ms

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, version = [*lines[0].split(" ", 2), "", ""][:3]
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip().lower()
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)  # a body is read and ignored
                close = headers.get("connection") == "close" or version == "HTTP/1.0"
                if method != "GET":
                    body = json.dumps({"detail": "GET only"}).encode()
                    writer.write(response("405 Method Not Allowed", body, close=close))
                else:
                    await asyncio.sleep(self.delay)
                    payload = {"path": target, "delay_ms": self.delay_ms, "ok": True}
                    writer.write(response("200 OK", json.dumps(payload).encode(), close=close))
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # the client went away, or sent something this stand-in does not parse
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def serve(args: argparse.Namespace) -> None:
    upstream = Upstream(args.delay_ms)
    server = await asyncio.start_server(
        upstream.handle, args.host, args.port, limit=MAX_HEAD, backlog=1024
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"upstream on http://{args.host}:{args.port}, {args.delay_ms:g} ms", flush=True)
    await stop.wait()
    server.close()  # open keep-alive connections are cancelled with the loop, not awaited


def main() -> None:
    args = parse_args()
    try:
        import uvloop  # optional: the rendered project's Python has it
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
