"""The pure core: what counts, the rolling window, headroom, forecast, which alert fires, targets and reconciliation. Values in, values out: no Kafka, clock or HTTP."""
