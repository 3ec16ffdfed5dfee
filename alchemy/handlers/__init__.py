"""Queue handlers, one module each, named in config.toml as ``"module:callable"``."""
