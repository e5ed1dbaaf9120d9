"""`python -m chatspace` entry point."""

from chatspace.cli import main

main()
