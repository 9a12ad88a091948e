"""ka-d-client without click, for a command line that kadeploy.control.early registered.

Such a command line is made only of the options early knows, each checked as click
would check it, so every parameter is known: early's, and click's defaults for the
rest (early.ABSENT, held to click's declaration by tests/test_early.py). The node goes
on to its deployment without loading click or declaring the commands, which cost
~20 ms of CPU here on the way to its first byte (bench/RESULTS.md). What it does is
the client command's own: kadeploy.control.client builds the configuration and runs
the node for both."""
from __future__ import annotations

from kadeploy.asyncio_without_tls import asyncio  # noqa: F401 (first: asyncio without ssl's start-up)
import logging

from kadeploy.control import early
from kadeploy.control.auth import load_key
from kadeploy.control.client import config_from, run_node
from kadeploy.data.synthetic import DISCARD_CONSUMER
from kadeploy.errors import failure_status
from kadeploy.view.logs import setup_logging


def run(prog: str) -> int:
    """The exit status of the node early.start() registered, having run it."""
    params = {**early.ABSENT, **early.registration().params}
    discard = params.pop("discard", False)
    try:
        setup_logging("ka-d-client", params["quiet"], params["verbose"])
        key = load_key(params["key_file"], warn=logging.getLogger("kadeploy").warning)
        cfg = config_from(params, DISCARD_CONSUMER if discard else params["consumer"], key)
        return run_node(cfg, early.take(params, discard, key))
    except (Exception, KeyboardInterrupt) as e:
        return failure_status(prog, e)
