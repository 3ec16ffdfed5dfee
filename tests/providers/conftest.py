from tests.fakes.fixtures import fake_ai, sdk_env

__all__ = ["fake_ai", "sdk_env"]
