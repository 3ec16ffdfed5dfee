from alchemy.lean import keep_out_otel_metrics

keep_out_otel_metrics()  # before anything imports redis

from alchemy.cli import main  # noqa: E402

raise SystemExit(main())
