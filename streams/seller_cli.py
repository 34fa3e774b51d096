"""`cancelwatch seller ID --marketplace US`: one seller's rate, headroom and reasons (streams/terminal.py)."""

from streams.terminal import seller_main as main

__all__ = ["main"]
