from porttrap.cli.main import main

raise SystemExit(main())
