"""AI providers: text generation (Claude, GPT, offline) behind one interface, images
(OpenAI images API, offline), and the mapping of SDK errors into the engine's error tree.

This package's ``__init__`` imports no SDK, so the configuration can use its pure-data
modules at startup.
"""
