from alchemy.lean import defer_importlib_metadata, keep_out_otel_metrics

# Before anything imports redis (alchemy/lean.py).
keep_out_otel_metrics()
defer_importlib_metadata()

from alchemy.cli import main  # noqa: E402

raise SystemExit(main())
