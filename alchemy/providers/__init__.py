"""AI providers: text generation (Claude, GPT, offline) behind one interface, images
(OpenAI images API, offline), and the mapping of SDK errors into the engine's error tree.

This package's ``__init__`` imports no SDK, so the configuration can use its pure-data
modules at startup. It installs :mod:`alchemy.providers.lazy_exports` before any of its
modules imports an SDK, so a process loads only the SDK types it uses.
"""

from alchemy.providers import lazy_exports

lazy_exports.install()
