"""The example resource: create, read, list, update and delete items.

Reads are open to anyone; writes are on ``write_router``, which ``create_app`` mounts behind
``deps.WRITE_GUARD`` (with the auth feature: a signed-in user).
"""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, status
from sqlalchemy import RowMapping, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..deps import ReadSessionDep, SessionDep
from ..models import Item
from ..pagination import DEFAULT_PAGE_SIZE, Cursor, PageSize, decode_cursor, page
from ..schemas import (
    BODY_ERRORS,
    INT32_MAX,
    ItemCreate,
    ItemPage,
    ItemRead,
    ItemUpdate,
    error_responses,
)

# Read paths select plain columns (no ORM identity map or object loading) and let FastAPI
# validate the rows once against the route's response_model.
ITEM_COLUMNS = select(*Item.__table__.columns)
ITEM_BY_ID = ITEM_COLUMNS.where(Item.id == bindparam("item_id"))

router = APIRouter(prefix="/items", tags=["items"])
# Writes apart: ``create_app`` mounts them behind ``deps.WRITE_GUARD`` (a user, with auth on).
write_router = APIRouter(prefix="/items", tags=["items"])

ItemId = Annotated[int, Path(ge=1, le=INT32_MAX)]

NOT_FOUND = error_responses(status.HTTP_404_NOT_FOUND)
CONFLICT = error_responses(status.HTTP_409_CONFLICT)


async def _get_or_404(session: AsyncSession, item_id: int) -> Item:
    item = await session.get(Item, item_id)
    if item is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"item {item_id} not found")
    return item


async def _flush_or_409(session: AsyncSession, name: str) -> None:
    """Flush now so a unique clash becomes a 409 (the request's session then rolls back)."""
    try:
        await session.flush()
    except IntegrityError:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"an item named {name!r} already exists"
        ) from None


@write_router.post("", status_code=status.HTTP_201_CREATED, responses=BODY_ERRORS | CONFLICT)
async def create_item(body: ItemCreate, session: SessionDep) -> ItemRead:
    item = Item(**body.model_dump())
    session.add(item)
    await _flush_or_409(session, body.name)
    return ItemRead.model_validate(item)


@router.get("", response_model=ItemPage)
async def list_items(
    session: ReadSessionDep, limit: PageSize = DEFAULT_PAGE_SIZE, cursor: Cursor = None
) -> dict[str, Any]:
    """Items in id order, a keyset page at a time (see ``pagination.py``)."""
    statement = ITEM_COLUMNS.order_by(Item.id).limit(limit + 1)
    after = decode_cursor(cursor)
    if after is not None:
        statement = statement.where(Item.id > after)
    rows = (await session.execute(statement)).mappings().all()
    items, next_cursor = page(rows, limit, key=lambda row: row["id"])
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{item_id}", response_model=ItemRead, responses=NOT_FOUND)
async def get_item(item_id: ItemId, session: ReadSessionDep) -> RowMapping:
    row = (await session.execute(ITEM_BY_ID, {"item_id": item_id})).mappings().one_or_none()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"item {item_id} not found")
    return row


@write_router.patch("/{item_id}", responses=BODY_ERRORS | NOT_FOUND | CONFLICT)
async def update_item(item_id: ItemId, body: ItemUpdate, session: SessionDep) -> ItemRead:
    item = await _get_or_404(session, item_id)
    changes = body.model_dump(exclude_unset=True)
    for field, value in changes.items():
        setattr(item, field, value)
    await _flush_or_409(session, changes.get("name", item.name))
    return ItemRead.model_validate(item)


@write_router.delete("/{item_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_item(item_id: ItemId, session: SessionDep) -> None:
    await session.delete(await _get_or_404(session, item_id))
