"""``python -m lastlayer`` (so ``accelerate launch -m lastlayer train ...`` works)."""

from lastlayer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
