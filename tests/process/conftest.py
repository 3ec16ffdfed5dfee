from tests.fakes.fixtures import database_url, db, fake_ai, sdk_env

__all__ = ["database_url", "db", "fake_ai", "sdk_env"]
