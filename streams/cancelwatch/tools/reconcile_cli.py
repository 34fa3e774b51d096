"""`cancelwatch reconcile ID --marketplace US`: one seller's counts against Amazon's account-health report (streams/cancelwatch/tools/terminal.py)."""

from cancelwatch.tools.terminal import reconcile_main as main

__all__ = ["main"]
