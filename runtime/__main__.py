"""`python -m fraudscore` runs the CLI."""

from .cli import main

main()
