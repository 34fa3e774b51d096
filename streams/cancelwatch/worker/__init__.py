"""`cancelwatch worker`: the faust shell around the pure core.

| module | what it is for |
|---|---|
| `app` | faust wiring: topics, table, agent, timers, pages, `main` |
| `table_store` | the state transaction: staged, changelogged, written, with fail points |
| `ownership` | which worker owns which seller's partition, for the web and alerting |
| `runtime` | apply fetches in groups, commit, evaluate alerts, hand decisions to delivery |
| `web` | the HTTP views and routing, testable without a faust app |
"""

from cancelwatch.worker.app import main

__all__ = ["main"]
