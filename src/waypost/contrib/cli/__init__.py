"""The ``waypost`` command (also ``python -m waypost``), built on click.

Commands: ``list``, ``watch``, ``register``, ``backends``, ``doctor`` and
``demo``; ``waypost COMMAND --help`` documents each. Errors are one line on
stderr and a non-zero exit. ``--url`` defaults to the same environment
precedence as :func:`waypost.connect`. Only this package imports click, so
``import waypost`` stays light.
"""

from __future__ import annotations

from ._commands import cli
from ._demo import demo

__all__ = ["cli", "main"]

cli.add_command(demo)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="waypost")
