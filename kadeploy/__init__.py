"""kadeploy: clone one machine onto many through a chain or tree of TCP connections."""
from kadeploy.version import __version__

__all__ = ["__version__"]
