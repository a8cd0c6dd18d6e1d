from selfinstruct_tui.cli import main

raise SystemExit(main())
