"""The `cancelwatch` command: one entry point, one subcommand per job.

Each subcommand lives in its own module with `main(argv) -> int`; modules
are imported only when their command runs, so `cancelwatch schema` does not
pay for importing faust.
"""

from __future__ import annotations

import importlib
import sys

from cancelwatch.settings import SettingError

# command -> (module, one-line help). docs/commands.md is checked against it.
COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("cancelwatch.worker.app", "Run the worker in the foreground (faust agents, tables, HTTP API)."),
    "settings": ("cancelwatch.tools.settings_cli", "Print the settings reference, or check the current environment."),
    "publish": ("cancelwatch.tools.publish", "Validate a JSON Lines or CSV file of events and send it to Kafka."),
    "import-orders": ("cancelwatch.tools.import_orders", "Publish the events of Amazon Orders API documents (getOrder, searchOrders)."),
    "publish-report": ("cancelwatch.tools.publish_report", "Publish an Amazon account-health report (GET_V2_SELLER_PERFORMANCE_REPORT) for reconciliation."),
    "target": ("cancelwatch.tools.target_cli", "Set, clear or list sellers' own limits (seller targets)."),
    "schema": ("cancelwatch.tools.schema_cli", "Print the JSON Schema of the events."),
    "simulate": ("cancelwatch.tools.simulate", "Generate realistic order and cancellation traffic (scenarios)."),
    "seller": ("cancelwatch.tools.seller_cli", "Show one seller's rate, headroom and reasons from the worker."),
    "reconcile": ("cancelwatch.tools.reconcile_cli", "Show one seller's counts against Amazon's latest account-health report."),
    "top": ("cancelwatch.tools.top_cli", "Live view of the sellers most at risk, with their active alerts."),
    "oncall": ("cancelwatch.receivers.oncall", "Receive Alertmanager webhooks: log each notification and print one line per alert."),
    "grafana-annotations": ("cancelwatch.receivers.grafana_annotations", "Receive Alertmanager webhooks and write alert start/end as Grafana annotations."),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: cancelwatch COMMAND [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`cancelwatch COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"cancelwatch: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    try:
        return int(module.main(rest) or 0)
    except SettingError as error:
        print(f"cancelwatch {command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
