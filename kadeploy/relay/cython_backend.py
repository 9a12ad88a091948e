"""The cython backend: the compiled splice/tee loop of kadeploy.relay._relay (no GIL).

Importing raises ImportError when the extension did not build (no compiler at
install); the backend is then reported unavailable.
"""
from kadeploy.relay._relay import NAME, run  # noqa: F401

__all__ = ["NAME", "run"]
