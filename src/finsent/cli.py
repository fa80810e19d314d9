"""How every command and stage script runs: expected failures as one line, SIGTERM as a clean exit."""

import signal
import sys
from collections.abc import Callable

from finsent.errors import FinsentError


def run_cli(main: Callable[[], None]) -> None:
    """Run a command's main(); a FinsentError becomes `error: <message>` and exit status 1.

    SIGTERM (as `kill` or a queue worker's stop sends it) exits through Python, so that `finally`
    blocks still run and no staging folder is left behind.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        main()
    except FinsentError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
