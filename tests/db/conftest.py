from tests.fakes.fixtures import database_url, db

__all__ = ["database_url", "db"]
