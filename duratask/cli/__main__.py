"""``python -m duratask.cli``: the command line."""

from . import main

main()
