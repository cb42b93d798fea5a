from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator

import pytest

from tests.pg_server import NoServer, new_database, postgres_server


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """One throwaway PostgreSQL server for the whole session (tests marked ``postgres``)."""
    missing = [m for m in ("psycopg", "langgraph.checkpoint.postgres") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[postgres]'")
    try:
        with postgres_server() as url:
            yield url
    except NoServer as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> str:
    """A fresh, empty database on the session's server."""
    return new_database(postgres_admin_url, f"t_{uuid.uuid4().hex[:10]}")
