"""Who owns which rows: the hook through which a feature that knows users scopes every query
on an ``Owned`` model (the example items, and the rows of features that store some) to the
rows the request may see.

A route that reads or writes owned rows takes ``OwnerDep`` and asks it: ``scope`` a select,
``may_see`` a row it loaded (a row it may not see is a 404, like a missing one, so ids leak
nothing), ``claim`` a row it creates. Without such a feature the answer is ``EVERYONE``: every
row, no owner stamped. With the auth feature, the guard of every non-public route puts the
signed-in user here (``put``): a user sees their own rows, an administrator sees all.
"""

from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Select

from .deps import GUARD
from .models import Owned


class Owner:
    """Whose rows a request may see and change. This one: everyone's."""

    def scope(self, statement: Select[Any], model: type[Owned]) -> Select[Any]:
        """``statement`` narrowed to the rows of ``model`` this owner may see."""
        return statement

    def may_see(self, row: Owned) -> bool:
        return True

    def claim(self, row: Owned) -> None:
        """Make a new row this owner's."""

    @property
    def identity(self) -> str:
        """Who this is, as a short string that tells owners apart (``idempotency.py`` keeps
        each owner's keys apart by it): none for everyone."""
        return ""


EVERYONE = Owner()
_STATE_KEY = "owner"


def put(request: Request, owner: Owner) -> None:
    """Record who is asking (the guard of a feature that knows users calls this)."""
    setattr(request.state, _STATE_KEY, owner)


async def get_owner(request: Request) -> Owner:
    """Who is asking, as the guard recorded it; ``EVERYONE`` in an app without a guard.

    In an app with a guard, a route that was mounted without it (``public``) has no owner:
    that is a mistake in the code, refused loudly rather than shown every row.
    """
    owner = getattr(request.state, _STATE_KEY, None)
    if isinstance(owner, Owner):
        return owner
    if GUARD.find(request.app) is None:
        return EVERYONE
    msg = f"{request.url.path} reads owned rows but is public: mount it behind deps.GUARD"
    raise RuntimeError(msg)


OwnerDep = Annotated[Owner, Depends(get_owner)]
