from rvseg.cli import main

raise SystemExit(main())
