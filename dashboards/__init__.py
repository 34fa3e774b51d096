"""Grafana dashboards of cancelwatch, generated as code.

`dashboards.generate` builds the three dashboards with grafana-foundation-sdk
and writes the committed JSON beside it; `dashboards.queries` reads the
PromQL back out of that JSON for the tests; `dashboards.metrics_reference`
writes docs/metrics.md from `cancelwatch.names.METRICS`.
"""
