"""Pydantic request and response models."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from .probes import Readiness

# The largest value of an INTEGER column on every backend: ids and counts are bounded by it,
# so a bigger number is a 422, not a database error.
INT32_MAX = 2**31 - 1


def _whole_number(value: object) -> object:
    """JSON Schema's integer includes ``3.0``: take it as ``3`` (strict models refuse floats)."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


# An integer in a strict request body: ``3`` and ``3.0`` are, ``true``, ``"3"`` and ``3.5`` are
# not. (Constraints go before the validator, or pydantic publishes them as ``ge``/``le``.)
PriceCents = Annotated[int, Field(ge=0, le=INT32_MAX), BeforeValidator(_whole_number)]


class FieldError(BaseModel):
    """Where a request was invalid (e.g. ``["body", "name"]``) and why."""

    loc: list[str | int]
    msg: str


class ErrorBody(BaseModel):
    """The JSON body of every error response."""

    detail: str
    request_id: str | None = None
    errors: list[FieldError] | None = None


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting ``ErrorBody`` for each status code."""
    return {code: {"model": ErrorBody} for code in codes}


# Routes that read a JSON body: one that cannot be decoded at all is a 400, one over
# MAX_JSON_BODY_BYTES a 413 (a body that decodes to the wrong shape is the app-wide 422).
BODY_ERRORS = error_responses(400, 413)


# PostgreSQL cannot store the NUL character in text: a name or description with one is refused
# by the schema (a 422, and published), not left to fail in the database (a 500).
NO_NUL = r"^[^\x00]*$"


# Request bodies are strict: what the published schema calls an integer or a string must be
# one (a JSON ``false`` or ``"12"`` is a 422, not coerced), and unknown fields are refused.
class ItemCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=100, pattern=NO_NUL)
    description: str | None = Field(default=None, max_length=1000, pattern=NO_NUL)
    price_cents: PriceCents = 0


class ItemUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # May be left out, but not null: the published schema says so (SkipJsonSchema hides the
    # None that only stands for "left out").
    name: (
        Annotated[str, Field(min_length=1, max_length=100, pattern=NO_NUL)] | SkipJsonSchema[None]
    ) = None
    description: str | None = Field(default=None, max_length=1000, pattern=NO_NUL)
    price_cents: PriceCents | SkipJsonSchema[None] = None

    @field_validator("name", "price_cents")
    @classmethod
    def _not_null(cls, value: object) -> object:
        """Fields may be left out of a PATCH, but not set to null."""
        if value is None:
            msg = "may be omitted but not null"
            raise ValueError(msg)
        return value


class ItemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str | None
    price_cents: int
    created_at: datetime
    updated_at: datetime


class ItemPage(BaseModel):
    """A keyset page: pass ``next_cursor`` back as ``?cursor=``; ``null`` on the last page."""

    items: list[ItemRead]
    next_cursor: str | None


class HealthStatus(BaseModel):
    status: Readiness
    checks: dict[str, str] = Field(default_factory=dict)
