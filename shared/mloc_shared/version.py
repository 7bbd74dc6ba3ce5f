"""Versions. The protocol version is sent by both sides on every agent call and checked.

Compatibility rule: peers talk when their PROTOCOL_VERSION majors are equal. Within a major,
fields are only ever added, and every reader ignores fields it does not know.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
PROTOCOL_HEADER = "X-MLOC-Protocol"


def protocol_compatible(theirs: int) -> bool:
    """Whether a peer speaking protocol ``theirs`` can talk to us."""
    return theirs == PROTOCOL_VERSION
