"""``python -m secagg.fl_core.cli``: the ``secagg`` command."""

from secagg.fl_core.cli.entry import main

raise SystemExit(main())
