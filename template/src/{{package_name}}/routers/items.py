"""The example resource: create, read, list, update and delete items.

``create_app`` mounts the routes behind ``deps.GUARD`` (with the auth feature: a signed-in
user), and each one asks ``OwnerDep`` which items the request may see (with auth: a user's
own, every item for an administrator; see ``owners.py``).
"""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, status
from sqlalchemy import RowMapping, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..deps import ReadSessionDep, SessionDep
from ..idempotency import RESPONSES as IDEMPOTENCY
from ..idempotency import IdempotencyDep
from ..models import Item
from ..owners import Owner, OwnerDep
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

ItemId = Annotated[int, Path(ge=1, le=INT32_MAX)]

NOT_FOUND = error_responses(status.HTTP_404_NOT_FOUND)
CONFLICT = error_responses(status.HTTP_409_CONFLICT)


async def _get_or_404(session: AsyncSession, item_id: int, owner: Owner) -> Item:
    item = await session.get(Item, item_id)
    if item is None or not owner.may_see(item):
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


@router.post(
    "", status_code=status.HTTP_201_CREATED, responses=BODY_ERRORS | CONFLICT | IDEMPOTENCY
)
async def create_item(
    body: ItemCreate, idempotency: IdempotencyDep, session: SessionDep, owner: OwnerDep
) -> ItemRead:
    """Create an item; with an ``Idempotency-Key``, a retry gets the first answer again."""
    item = Item(**body.model_dump())
    owner.claim(item)
    session.add(item)
    await _flush_or_409(session, body.name)
    answer = ItemRead.model_validate(item)
    await idempotency.record(session, answer)  # commits with the item
    return answer


@router.get("", response_model=ItemPage)
async def list_items(
    session: ReadSessionDep,
    owner: OwnerDep,
    limit: PageSize = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Items in id order, a keyset page at a time (see ``pagination.py``)."""
    statement = owner.scope(ITEM_COLUMNS, Item).order_by(Item.id).limit(limit + 1)
    after = decode_cursor(cursor)
    if after is not None:
        statement = statement.where(Item.id > after)
    rows = (await session.execute(statement)).mappings().all()
    items, next_cursor = page(rows, limit, key=lambda row: row["id"])
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{item_id}", response_model=ItemRead, responses=NOT_FOUND)
async def get_item(item_id: ItemId, session: ReadSessionDep, owner: OwnerDep) -> RowMapping:
    result = await session.execute(owner.scope(ITEM_BY_ID, Item), {"item_id": item_id})
    row: RowMapping | None = result.mappings().one_or_none()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"item {item_id} not found")
    return row


@router.patch("/{item_id}", responses=BODY_ERRORS | NOT_FOUND | CONFLICT)
async def update_item(
    item_id: ItemId, body: ItemUpdate, session: SessionDep, owner: OwnerDep
) -> ItemRead:
    item = await _get_or_404(session, item_id, owner)
    changes = body.model_dump(exclude_unset=True)
    for field, value in changes.items():
        setattr(item, field, value)
    await _flush_or_409(session, changes.get("name", item.name))
    return ItemRead.model_validate(item)


@router.delete("/{item_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_item(item_id: ItemId, session: SessionDep, owner: OwnerDep) -> None:
    await session.delete(await _get_or_404(session, item_id, owner))
