"""``python -m selfdistill`` (also what ``torchrun -m selfdistill`` runs)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
