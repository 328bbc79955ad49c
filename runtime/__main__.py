"""`python -m fraudscore` runs the CLI."""

from fraudscore.cli import main

if __name__ == "__main__":  # not when `run --workers` spawns a worker, which imports this module again
    main()
