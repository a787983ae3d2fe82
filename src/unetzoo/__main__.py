"""``python -m unetzoo`` (and ``torchrun -m unetzoo``) run the command-line interface."""

from unetzoo.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
