"""``python -m ferroclip`` (and ``torchrun -m ferroclip``) runs the command line."""

from .cli import main

raise SystemExit(main())
