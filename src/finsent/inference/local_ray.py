"""A Ray on this machine for one `finsent-score` run, which ends with the run however the run ends.

The Ray that `ray.init()` starts in a process shares that process's fate through the kernel: killed
outright (`kill -9`, out of memory), it takes Ray's head processes with it, but not the agents that
Ray's raylet starts, which report the raylet's death to a head that is gone too and wait for its
answer a long while. Ray's own shutdown (`ray.shutdown()`) stops them all at once.

So the local Ray is started by a keeper: a process of its own session (a terminal's Ctrl-C and a kill
of the command's process group do not reach it), which starts Ray with `ray.init()`, tells the command
its address, and shuts Ray down when the command closes the keeper's stdin or dies, whichever comes
first: the kernel closes a dead process's end of the pipe.
"""

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from finsent.errors import FinsentError

AUTH_MODE, AUTH_TOKEN = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"
"""Ray's token authentication: a new local Ray has it on unless RAY_AUTH_MODE says otherwise."""


def share_authentication() -> None:
    """Where RAY_AUTH_MODE is unset, token authentication with a token of this run's own, for this
    process and the keeper it starts: a process joining a Ray by its address uses a token only when
    told to. Called before Ray is imported, which reads the mode once."""
    if AUTH_MODE not in os.environ:
        os.environ[AUTH_MODE] = "token"
        os.environ.setdefault(AUTH_TOKEN, secrets.token_hex(32))


@contextmanager
def local_ray() -> Iterator[str]:
    """A Ray on this machine, running until the block ends or this process dies: its address."""
    keeper = subprocess.Popen(
        [sys.executable, "-m", __name__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # The keeper imports this module as this process does, wherever it comes from.
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, sys.path))},
    )
    try:
        started = keeper.stdout.readline()
        if not started:
            raise FinsentError("the local Ray did not start (Ray's messages are above)")
        yield json.loads(started)["address"]
    finally:
        keeper.stdin.close()  # the keeper shuts Ray down
        keeper.wait()


def keep() -> None:
    """The keeper: start Ray, write its address on stdout, shut it down at the end of stdin."""
    import ray

    # Ray's own messages go to stderr: stdout carries the address alone.
    address_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # "local": a Ray of its own, even where another runs on this machine (which `ray.init()` would join).
    context = ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    try:
        address_out.write(json.dumps({"address": context.address_info["gcs_address"]}) + "\n")
        address_out.close()
        sys.stdin.read()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    keep()
