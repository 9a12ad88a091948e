"""Files written whole or not at all: to a temporary name beside them, then renamed,
so that a reader (a report's consumer, the install server reading the kit's state, a
node's status) never sees half of one."""
from __future__ import annotations

import json
import os
import tempfile


def write_text_atomically(path, text: str, prefix: str = ".kadeploy-") -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json_atomically(path, data, prefix: str = ".kadeploy-report-") -> None:
    write_text_atomically(path, json.dumps(data, indent=2) + "\n", prefix)
