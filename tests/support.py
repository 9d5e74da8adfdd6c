"""Helpers shared by test files (not a test module): free TCP ports for the rendezvous of launched training runs."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it): each launched run gets its own, so no
    two tests -- or a straggler of an earlier one -- share a master port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
