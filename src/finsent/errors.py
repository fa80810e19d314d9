"""Expected failures: what the user can fix, reported by `finsent.cli.run_cli` as one line."""


class FinsentError(Exception):
    """A failure the user can fix (bad input, bad params, missing data); the message says what."""
