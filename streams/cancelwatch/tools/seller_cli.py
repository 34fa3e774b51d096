"""`cancelwatch seller ID --marketplace US`: one seller's rate, headroom and reasons (streams/cancelwatch/tools/terminal.py)."""

from cancelwatch.tools.terminal import seller_main as main

__all__ = ["main"]
