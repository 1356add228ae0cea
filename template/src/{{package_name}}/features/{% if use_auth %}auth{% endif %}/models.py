"""The auth feature's table: the users who sign in."""

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ...models import Base, TimestampMixin


class User(TimestampMixin, Base):
    """Someone who signs in (auth feature). Only a hash of the password is stored.

    ``email`` is stored lower-cased (the CHECK refuses anything else, also from outside the
    app), so the unique constraint makes it unique whatever its case.
    """

    __tablename__ = "users"
    __table_args__ = (sa.CheckConstraint("email = lower(email)", name="email_lowercase"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    is_active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    is_superuser: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # In every access token ("ver"): moving it on (a new password, "sign out everywhere")
    # makes every token issued before invalid.
    token_version: Mapped[int] = mapped_column(default=0, server_default="0")
