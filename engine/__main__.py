"""``python -m engine`` is ``python -m engine.sweep``."""

from __future__ import annotations

import sys

from engine.sweep import main

sys.exit(main())
