"""`python -m fraudscore` runs the CLI."""

from fraudscore.cli import main

main()
