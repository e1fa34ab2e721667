"""`python -m distill ...`: the same command line as `distill ...`."""

from distill.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
