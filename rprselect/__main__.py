"""``python -m rprselect``: the same command line as the ``rprselect`` script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
