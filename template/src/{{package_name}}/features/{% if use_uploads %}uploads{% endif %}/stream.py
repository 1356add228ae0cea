"""Receive one multipart file field as it arrives, straight into storage.

The request body is fed chunk by chunk to python-multipart's streaming parser; the file
part's bytes go to storage as they are parsed. Nothing is buffered whole and there is no
spooled temporary copy, so memory stays flat whatever the file size. The size limit is
enforced while streaming; on any failure the storage keeps nothing.
"""

import asyncio
import hashlib
import unicodedata
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from fastapi import HTTPException, Request, status
from python_multipart.exceptions import ParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from .storage import Write

# Multipart framing (boundary lines, part headers) allowed on top of the file itself.
FRAMING_ALLOWANCE = 16 * 1024
MAX_FILENAME_LENGTH = 255
# Parsed file bytes are joined into batches this big before they are hashed and written:
# two thread hops per MiB instead of one per network chunk.
WRITE_BATCH_BYTES = 1024 * 1024


class Sink(Protocol):
    """Where a received file goes: a ``Storage``, or ``DISCARD``."""

    def open_write(self, key: str) -> AbstractAsyncContextManager[Write]: ...


class _Discard:
    """A sink that keeps nothing (a file that is only read to be hashed)."""

    @asynccontextmanager
    async def open_write(self, key: str) -> AsyncIterator[Write]:
        async def write(data: bytes) -> None:
            return None

        yield write


DISCARD = _Discard()


@dataclass(frozen=True)
class ReceivedFile:
    key: uuid.UUID
    filename: str
    content_type: str
    size: int
    sha256: str


def safe_filename(raw: str) -> str:
    """A display name from a client-supplied file name; never used as a path."""
    name = unicodedata.normalize("NFKC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable() and ch not in '"<>:|?*')
    name = name.strip(" .")[:MAX_FILENAME_LENGTH]
    return name or "upload"


@dataclass
class _FilePart:
    """Collects python-multipart callbacks for the one file field we want."""

    field_name: str
    headers: dict[str, bytes] = field(default_factory=dict)
    header_field: bytes = b""
    header_value: bytes = b""
    in_part: bool = False
    found: bool = False
    complete: bool = False
    filename: str = ""
    content_type: str = ""
    pending: list[bytes] = field(default_factory=list)

    def on_part_begin(self) -> None:
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.decode("latin-1").lower()] = self.header_value
        self.header_field = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get("content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if self.found or name != self.field_name or b"filename" not in options:
            return
        self.found = self.in_part = True
        self.filename = safe_filename(options[b"filename"].decode("utf-8", "replace"))
        mime, _ = parse_options_header(self.headers.get("content-type", b""))
        self.content_type = mime.decode("latin-1") or "application/octet-stream"

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_part:
            self.pending.append(bytes(data[start:end]))

    def on_part_end(self) -> None:
        if self.in_part:
            self.in_part = False
            self.complete = True

    def take(self) -> list[bytes]:
        pieces, self.pending = self.pending, []
        return pieces


async def receive_file(
    request: Request,
    storage: Sink,
    *,
    field_name: str,
    max_bytes: int,
    allowed_types: list[str],
) -> ReceivedFile:
    """Stream the file field ``field_name`` into ``storage``; HTTPException on bad input."""
    mime, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"send multipart/form-data with a {field_name!r} file field",
        )
    declared = request.headers.get("content-length")
    if (
        declared is not None
        and declared.isdigit()
        and int(declared) > max_bytes + FRAMING_ALLOWANCE
    ):
        raise _too_large(max_bytes)

    part = _FilePart(field_name)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": part.on_part_begin,
            "on_header_field": part.on_header_field,
            "on_header_value": part.on_header_value,
            "on_header_end": part.on_header_end,
            "on_headers_finished": part.on_headers_finished,
            "on_part_data": part.on_part_data,
            "on_part_end": part.on_part_end,
        },
    )
    chunks: AsyncIterator[bytes] = request.stream().__aiter__()
    async for chunk in chunks:
        _feed(parser, chunk)
        if part.found:
            break
    if not part.found:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"no file in the {field_name!r} field"
        )
    if part.content_type not in allowed_types:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"content type {part.content_type!r} is not allowed; "
            f"allowed: {', '.join(allowed_types)}",
        )

    key = uuid.uuid4()
    digest = hashlib.sha256()
    size = 0
    batch: list[bytes] = []
    batched = 0
    writing: asyncio.Future[tuple[None, object]] | None = None
    async with storage.open_write(key.hex) as write:
        try:
            while True:
                for piece in part.take():
                    size += len(piece)
                    if size > max_bytes:
                        raise _too_large(max_bytes)
                    batch.append(piece)
                    batched += len(piece)
                if batched >= WRITE_BATCH_BYTES or (part.complete and batch):
                    data = b"".join(batch)
                    batch.clear()
                    batched = 0
                    if writing is not None:
                        await writing
                    # Hashed and written in worker threads (hashlib lets go of the GIL) while
                    # the event loop parses the next batch: the two cores work at once.
                    writing = asyncio.gather(asyncio.to_thread(digest.update, data), write(data))
                if part.complete:
                    break
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    raise HTTPException(
                        status.HTTP_400_BAD_REQUEST, "the request body ended inside the file part"
                    ) from None
                _feed(parser, chunk)
            if writing is not None:
                await writing
        finally:
            if writing is not None:
                # On failure, the write in flight ends before storage removes the file.
                await asyncio.wait([writing])
                if not writing.cancelled():
                    writing.exception()  # retrieved; the error being raised is the one reported
    return ReceivedFile(key, part.filename, part.content_type, size, digest.hexdigest())


def _feed(parser: MultipartParser, chunk: bytes) -> None:
    """Parse the next chunk; a body that is not valid multipart is the client's error (400)."""
    try:
        parser.write(chunk)
    except ParseError as exc:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"malformed multipart body: {exc}"
        ) from None


def _too_large(max_bytes: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE, f"the file exceeds the limit of {max_bytes} bytes"
    )
