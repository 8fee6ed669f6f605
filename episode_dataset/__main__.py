from episode_dataset.cli import main

raise SystemExit(main())
