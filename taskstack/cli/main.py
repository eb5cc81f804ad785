"""`python -m taskstack.cli.main` and the console scripts land here."""

from __future__ import annotations

from taskstack.cli.app import main

if __name__ == "__main__":
    main()
