"""Receivers of Alertmanager's webhooks: the on-call log and Grafana annotations."""
