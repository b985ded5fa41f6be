"""``python -m waypost``: the ``waypost`` command."""

from waypost.contrib.cli import main

if __name__ == "__main__":
    main()
