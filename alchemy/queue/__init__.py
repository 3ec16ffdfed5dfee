"""The Redis list queue: key layout, job envelope, Lua steps and the public operations.

This package is the only place that knows key names or Redis commands of the protocol
described in docs/protocol.md.
"""
