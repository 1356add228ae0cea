"""The items resource: every route and every failure path."""

from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest


async def create(client: httpx2.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post("/items", json={"name": "widget", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_create_returns_the_item(client: httpx2.AsyncClient) -> None:
    item = await create(client, description="A widget", price_cents=250)
    assert item["id"] > 0
    assert item["name"] == "widget"
    assert item["description"] == "A widget"
    assert item["price_cents"] == 250
    created = datetime.fromisoformat(item["created_at"])
    assert created.tzinfo is not None
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60


async def test_get_returns_what_was_created(client: httpx2.AsyncClient) -> None:
    item = await create(client)
    response = await client.get(f"/items/{item['id']}")
    assert response.status_code == 200
    assert response.json() == item


@pytest.mark.parametrize(
    ("method", "body"),
    [("GET", None), ("PATCH", {"description": "x"}), ("DELETE", None)],
    ids=["get", "update", "delete"],
)
async def test_missing_item_is_404_naming_it(
    client: httpx2.AsyncClient, method: str, body: dict[str, Any] | None
) -> None:
    response = await client.request(method, "/items/999999", json=body)
    assert response.status_code == 404
    assert response.json()["detail"] == "item 999999 not found"


async def test_duplicate_name_is_409_and_keeps_the_first(client: httpx2.AsyncClient) -> None:
    first = await create(client, price_cents=1)
    response = await client.post("/items", json={"name": "widget", "price_cents": 2})
    assert response.status_code == 409
    assert "widget" in response.json()["detail"]
    listing = (await client.get("/items")).json()
    assert listing["items"] == [first]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "ok", "price_cents": -1}, "price_cents"),
        ({"name": "ok", "price_cents": "lots"}, "price_cents"),
        ({"name": "ok", "colour": "red"}, "colour"),
    ],
)
async def test_bad_body_is_422_naming_the_field(
    client: httpx2.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/items", json=body)
    assert response.status_code == 422
    locations = [error["loc"] for error in response.json()["errors"]]
    assert ["body", field] in locations


async def test_malformed_json_is_422(client: httpx2.AsyncClient) -> None:
    response = await client.post(
        "/items", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


async def walk(client: httpx2.AsyncClient, limit: int) -> list[list[int]]:
    """Every page of the listing, following ``next_cursor`` to the end: ids per page."""
    pages: list[list[int]] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        response = await client.get("/items", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([item["id"] for item in body["items"]])
        if body["next_cursor"] is None:
            return pages
        params["cursor"] = body["next_cursor"]


async def test_list_pages_follow_the_cursor_to_the_last_page(client: httpx2.AsyncClient) -> None:
    ids = [(await create(client, name=f"item-{n}"))["id"] for n in range(5)]
    # First, middle and last page; the last one has no next_cursor.
    assert await walk(client, limit=2) == [ids[0:2], ids[2:4], ids[4:5]]
    # A page that ends exactly at the last row is the last page.
    assert await walk(client, limit=5) == [ids]


async def test_list_of_an_empty_table_is_one_empty_page(client: httpx2.AsyncClient) -> None:
    assert (await client.get("/items")).json() == {"items": [], "next_cursor": None}


async def test_list_rows_inserted_between_pages_are_seen_once(client: httpx2.AsyncClient) -> None:
    ids = [(await create(client, name=f"item-{n}"))["id"] for n in range(4)]
    first = (await client.get("/items", params={"limit": 2})).json()
    # Another client inserts while this one pages: nothing shifts, nothing repeats.
    later = [(await create(client, name=f"late-{n}"))["id"] for n in range(3)]
    rest = (
        await client.get("/items", params={"limit": 100, "cursor": first["next_cursor"]})
    ).json()
    seen = [item["id"] for item in first["items"] + rest["items"]]
    assert seen == ids + later
    assert rest["next_cursor"] is None


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",  # not base64 of JSON
        "!!!!",  # not base64 at all
        "bnVsbA",  # base64 of JSON null
        "WyJ4Il0",  # ["x"]: not an integer key
        "WzEsMl0",  # [1,2]: not one key
        "Wy0xXQ",  # [-1]: negative
        "W3RydWVd",  # [true]: a boolean is not a key
        "",  # empty
        "A" * 17,  # longer than any cursor the API issues (16 characters)
    ],
)
async def test_list_bad_cursor_is_422_naming_it(client: httpx2.AsyncClient, cursor: str) -> None:
    response = await client.get("/items", params={"cursor": cursor})
    assert response.status_code == 422
    body = response.json()
    assert body["errors"][0]["loc"] == ["query", "cursor"]
    assert body["request_id"]


async def test_list_cursor_of_a_deleted_row_still_pages(client: httpx2.AsyncClient) -> None:
    first = await create(client, name="first")
    second = await create(client, name="second")
    cursor = (await client.get("/items", params={"limit": 1})).json()["next_cursor"]
    await client.delete(f"/items/{first['id']}")
    page = (await client.get("/items", params={"cursor": cursor})).json()
    assert page == {"items": [second], "next_cursor": None}
    await client.delete(f"/items/{second['id']}")
    assert (await client.get("/items", params={"cursor": cursor})).json()["items"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": "ten"}, "limit")],
)
async def test_list_bounds_are_enforced(
    client: httpx2.AsyncClient, params: dict[str, Any], field: str
) -> None:
    response = await client.get("/items", params=params)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["query", field]


async def test_update_changes_only_given_fields(client: httpx2.AsyncClient) -> None:
    item = await create(client, description="old", price_cents=5)
    response = await client.patch(f"/items/{item['id']}", json={"description": "new"})
    assert response.status_code == 200
    updated = response.json()
    assert updated["description"] == "new"
    assert updated["price_cents"] == 5
    assert updated["name"] == "widget"
    assert updated["updated_at"] >= item["updated_at"]


async def test_update_to_a_taken_name_is_409(client: httpx2.AsyncClient) -> None:
    await create(client, name="first")
    second = await create(client, name="second")
    response = await client.patch(f"/items/{second['id']}", json={"name": "first"})
    assert response.status_code == 409
    assert (await client.get(f"/items/{second['id']}")).json()["name"] == "second"


async def test_update_with_null_name_is_422(client: httpx2.AsyncClient) -> None:
    item = await create(client)
    response = await client.patch(f"/items/{item['id']}", json={"name": None})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "name"]


async def test_delete_removes_the_item(client: httpx2.AsyncClient) -> None:
    item = await create(client)
    response = await client.delete(f"/items/{item['id']}")
    assert response.status_code == 204
    assert (await client.get(f"/items/{item['id']}")).status_code == 404


@pytest.mark.parametrize("body", [{"name": "a\u0000b"}, {"name": "ab", "description": "\u0000"}])
async def test_a_nul_character_is_refused(client: httpx2.AsyncClient, body: dict[str, str]) -> None:
    """PostgreSQL stores no NUL in text: the schema refuses it (422) on every backend."""
    response = await client.post("/items", json=body)
    assert response.status_code == 422
