"""``evcore`` and ``python -m evcore``: the command line, or one line saying how to install it.

The commands (:mod:`evcore.cli`) need the ``cli`` extra (click and rich). This entry point
imports them only after checking, so a missing library is advice, not a traceback.
"""

from __future__ import annotations

import sys

#: The libraries of the ``cli`` extra.
CLI_LIBRARIES = frozenset({"click", "rich"})


def main() -> None:
    """Run the ``evcore`` command, or say which extra to install and exit with status 1."""
    try:
        from evcore.cli import main as run_cli  # noqa: PLC0415 - only once checked
    except ImportError as exc:
        library = (exc.name or "").partition(".")[0]
        if library not in CLI_LIBRARIES:
            raise
        advice = f"evcore: the command line needs {library}: pip install 'evcore[cli]'"
        print(advice, file=sys.stderr)
        sys.exit(1)
    run_cli()


if __name__ == "__main__":
    main()
