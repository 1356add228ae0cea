"""Create the first superuser: ``python -m <package>.features.auth.create_superuser``.

Reads ``FIRST_SUPERUSER_EMAIL`` and ``FIRST_SUPERUSER_PASSWORD`` (with the settings' prefix,
from the environment or ``.env``). Run it once after the first migration; running it again
changes nothing (an existing account keeps its password and flags). It refuses a missing
password, one shorter than ``PASSWORD_MIN_LENGTH`` (12 unless set) or longer than 128
characters, and in production the ``.env.example`` value.
"""

import asyncio
import logging
import sys

from pydantic import ValidationError
from sqlalchemy import select

from ...db import Database
from ...logs import configure_logging
from ...settings import Settings
from .models import User
from .security import hash_password, is_email, normalize_email, password_problem

logger = logging.getLogger(__name__)


class SuperuserError(Exception):
    """The settings do not describe a superuser that can be created."""


async def create_superuser(settings: Settings) -> bool:
    """Create the superuser the settings name; False if that account already exists."""
    prefix = settings.model_config.get("env_prefix", "")
    email = normalize_email(settings.first_superuser_email or "")
    password = settings.first_superuser_password
    if not is_email(email):
        msg = f"set {prefix}FIRST_SUPERUSER_EMAIL to the superuser's e-mail address"
        raise SuperuserError(msg)
    if password is None:
        msg = f"set {prefix}FIRST_SUPERUSER_PASSWORD to the superuser's password"
        raise SuperuserError(msg)
    problem = password_problem(password.get_secret_value(), settings)
    if problem is not None:
        msg = f"{prefix}FIRST_SUPERUSER_PASSWORD: {problem}"
        raise SuperuserError(msg)
    database = Database(settings)
    try:
        async with database.sessionmaker() as session, session.begin():
            if await session.scalar(select(User.id).where(User.email == email)) is not None:
                logger.info("a user with e-mail %s already exists: nothing changed", email)
                return False
            password_hash = await hash_password(password.get_secret_value(), settings)
            session.add(User(email=email, password_hash=password_hash, is_superuser=True))
        logger.info("created superuser %s", email)
        return True
    finally:
        await database.dispose()


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.exit(f"{__package__}: invalid settings, no superuser created:\n{exc}")
    configure_logging(settings)
    try:
        asyncio.run(create_superuser(settings))
    except SuperuserError as exc:
        sys.exit(f"{__package__}: {exc}")


if __name__ == "__main__":
    main()
