"""`cancelwatch top`: live view of the sellers most at risk and their alerts (streams/terminal.py)."""

from streams.terminal import top_main as main

__all__ = ["main"]
