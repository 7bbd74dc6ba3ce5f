"""Code both sides of MLOC share: the wire protocol, task spec parsing, settings and the CLI."""

from mloc_shared.version import PROTOCOL_VERSION, __version__

__all__ = ["PROTOCOL_VERSION", "__version__"]
