"""The producer client and the commands around the worker: publish, simulate, import-orders, target, seller, top, settings, schema."""
