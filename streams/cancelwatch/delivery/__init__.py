"""Delivery of the worker's alerts to Alertmanager (API v2)."""
