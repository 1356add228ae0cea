"""Keyset (cursor) pagination: list pages whose cost does not grow with the table.

A page is the ``limit`` rows that follow a key, in key order, read through the key's index
(``WHERE id > :after ORDER BY id LIMIT :limit + 1``). There is no ``OFFSET``, which reads
and throws away every row before the page, and no ``COUNT(*)``, which reads the whole table:
page 90,000 of a million rows costs what page 1 costs. Rows inserted between two requests
never shift a page, so a client walking the pages sees every row that existed when it
started exactly once.

The client gets an opaque ``next_cursor`` (``null`` on the last page) and sends it back as
``?cursor=``. A cursor this API did not issue is a 422 naming ``cursor``, never a 500.
To page another resource the same way: select one row more than ``limit`` after
``decode_cursor(cursor)`` on an indexed, unique, never-updated key, then return
``page(rows, limit, key=...)`` (see ``routers/items.py``).
"""

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import Query
from fastapi.exceptions import RequestValidationError

from .schemas import INT32_MAX

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50
# The OpenAPI format of a cursor: a string only this API issues (tests generate real ones).
CURSOR_FORMAT = "page-cursor"


def encode_cursor(key: int) -> str:
    """The cursor of the page that starts right after the row whose key is ``key``."""
    raw = json.dumps([key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# The longest cursor the API issues, the one after the largest key (16 characters): a longer
# one is refused before it is decoded. Paging on a BIGINT key, use its largest value here.
MAX_CURSOR_LENGTH = len(encode_cursor(INT32_MAX))

PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="rows per page")]
Cursor = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_LENGTH,
        description="`next_cursor` of the previous page; leave out for the first page",
        json_schema_extra={"format": CURSOR_FORMAT},
    ),
]


def decode_cursor(cursor: str | None, max_key: int = INT32_MAX) -> int | None:
    """The key a cursor points after (``None`` for the first page); 422 if it is not ours.

    ``max_key`` bounds the key to what its column holds (INTEGER by default).
    """
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        (key,) = json.loads(raw)
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        key = None
    if type(key) is not int or not 0 <= key <= max_key:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "cursor"),
                    "msg": "not a cursor this API issued: pass a page's next_cursor unchanged",
                    "input": cursor,
                }
            ]
        )
    return key


def page(
    rows: Sequence[Any], limit: int, key: Callable[[Any], int]
) -> tuple[Sequence[Any], str | None]:
    """Split ``limit + 1`` fetched rows into the page and the cursor of the next one."""
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], encode_cursor(key(rows[limit - 1]))
