"""`cancelwatch top`: live view of the sellers most at risk and their alerts (streams/cancelwatch/tools/terminal.py)."""

from cancelwatch.tools.terminal import top_main as main

__all__ = ["main"]
