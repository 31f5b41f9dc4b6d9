from clusterplan.reference.report import main

raise SystemExit(main())
