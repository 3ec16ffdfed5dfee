"""The worker's HTTP listener: health, readiness, Prometheus metrics and the admin API.

:func:`alchemy.http.app.create_app` builds the application from its dependencies;
:class:`alchemy.http.server.HttpServer` is the worker extension that serves it.
"""
