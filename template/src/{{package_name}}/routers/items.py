"""The example resource: create, read, list, update and delete items."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import RowMapping, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..deps import SessionDep
from ..models import Item
from ..schemas import ItemCreate, ItemPage, ItemRead, ItemUpdate, error_responses

MAX_PAGE_SIZE = 100
ITEM_BY_ID = select(*Item.__table__.columns).where(Item.id == bindparam("item_id"))

router = APIRouter(prefix="/items", tags=["items"])

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


@router.post("", status_code=status.HTTP_201_CREATED, responses=CONFLICT)
async def create_item(body: ItemCreate, session: SessionDep) -> ItemRead:
    item = Item(**body.model_dump())
    session.add(item)
    await _flush_or_409(session, body.name)
    return ItemRead.model_validate(item)


@router.get("")
async def list_items(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ItemPage:
    total = await session.scalar(select(func.count()).select_from(Item))
    rows = await session.scalars(select(Item).order_by(Item.id).limit(limit).offset(offset))
    return ItemPage(
        items=[ItemRead.model_validate(item) for item in rows],
        total=total or 0,
        limit=limit,
        offset=offset,
    )


@router.get("/{item_id}", response_model=ItemRead, responses=NOT_FOUND)
async def get_item(item_id: int, session: SessionDep) -> RowMapping:
    # The hot read path selects plain columns (no ORM identity map or object loading) and
    # lets FastAPI validate the row once against response_model.
    row = (await session.execute(ITEM_BY_ID, {"item_id": item_id})).mappings().one_or_none()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"item {item_id} not found")
    return row


@router.patch("/{item_id}", responses=NOT_FOUND | CONFLICT)
async def update_item(item_id: int, body: ItemUpdate, session: SessionDep) -> ItemRead:
    item = await _get_or_404(session, item_id)
    changes = body.model_dump(exclude_unset=True)
    for field, value in changes.items():
        setattr(item, field, value)
    await _flush_or_409(session, changes.get("name", item.name))
    return ItemRead.model_validate(item)


@router.delete("/{item_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_item(item_id: int, session: SessionDep) -> None:
    await session.delete(await _get_or_404(session, item_id))
