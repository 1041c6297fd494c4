"""``python -m tietorch``: the ``tietorch`` command (see :mod:`tietorch.cli`)."""

from tietorch.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
