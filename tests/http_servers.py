"""HTTP servers of the tests' own (stand-ins and receivers), each in a thread.

`serving(server)` runs one until the block ends. The server polls for shutdown
every 10 ms: with http.server's default of half a second, every test that starts
a server spent that long in its teardown.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from socketserver import BaseServer
from typing import Iterator

SHUTDOWN_POLL_SECONDS = 0.01


def start(server: BaseServer) -> threading.Thread:
    """Serve in a daemon thread; stop with `stop(server)`."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
                              daemon=True)
    thread.start()
    return thread


def stop(server: BaseServer) -> None:
    server.shutdown()
    server.server_close()


@contextmanager
def serving(server: BaseServer) -> Iterator[BaseServer]:
    start(server)
    try:
        yield server
    finally:
        stop(server)
