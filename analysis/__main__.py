"""``python -m analysis RUN_DIR``: same as ``python -m analysis.report RUN_DIR``."""

from __future__ import annotations

from analysis.report import main

if __name__ == "__main__":
    raise SystemExit(main())
