from alchemy.cli import main

raise SystemExit(main())
