"""`cancelwatch worker`: the faust shell around the pure core.

| module | what it is for |
|---|---|
| `app` | faust wiring: topics, table, agent, timers, pages, `main` |
| `consumer` | the faust consumer that hands whole fetches to the agent |
| `records` | aiokafka's fetched records read in one loop per partition (compiled) |
| `mailbox` | the hand-over of fetches from the consumer to the agent |
| `table_store` | the state transaction: staged, changelogged, written, with fail points |
| `ownership` | which worker owns which seller's partition, for the web and alerting |
| `runtime` | apply fetches in groups, commit, evaluate alerts, hand decisions to delivery |
| `feeds` | small topics read whole by every worker: seller targets, the event clock |
| `web` | the HTTP views and routing, testable without a faust app |
| `metrics` | counters, and the scrape-time collector with the bounded top-K |

`cancelwatch worker` runs `app.main`. Nothing is imported here, so the modules
that need no faust (`web`, `ownership`, `table_store`) import without it.
"""
