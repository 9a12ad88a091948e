"""asyncio, imported without its TLS support.

asyncio imports ssl only to offer TLS, which kadeploy never asks of it (its links are
authenticated by HMAC and encrypted with cryptography's AES-GCM). Loading OpenSSL and
building ssl's enums costs 13-24 ms of a process's start-up (`python -X importtime`,
bench/RESULTS.md), on the
wall clock of every deployment: the server's start comes before its first byte.
Imported here with ssl hidden, asyncio takes TLS as absent; an `import ssl` later works
as ever. The server and the client import this first; where asyncio or ssl is already
loaded, nothing changes.
"""
from __future__ import annotations

import sys


def _import_without_ssl():
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        import asyncio
        return asyncio
    sys.modules["ssl"] = None   # `import ssl` raises ImportError while this entry is None
    try:
        import asyncio
    finally:
        if "ssl" in sys.modules and sys.modules["ssl"] is None:
            del sys.modules["ssl"]
    return asyncio


asyncio = _import_without_ssl()
