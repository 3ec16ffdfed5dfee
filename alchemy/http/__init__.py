"""The worker's HTTP listener: health, readiness, Prometheus metrics, the admin API and the
dashboard (:mod:`alchemy.http.dashboard`, its files in ``static/``, its live feed in
:mod:`alchemy.http.live`).

:func:`alchemy.http.app.create_app` builds the application from its dependencies;
:class:`alchemy.http.server.HttpServer` is the worker extension that serves it.
"""
