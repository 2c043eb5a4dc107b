"""Prometheus metrics of webhook delivery (on the default registry, served by
``/metrics``):

- ``flagrail_webhook_deliveries_total{result}``: attempts by outcome: ``delivered``,
  ``retry`` (failed, will be tried again), ``failed`` (given up after the retry
  window), ``lease_lost`` (the lease expired mid-send; another worker owns it now).
- ``flagrail_webhook_delivery_lag_seconds``: from the change's commit to its
  successful delivery.
- ``flagrail_webhook_outbox_depth``: outbox rows not yet fanned out plus pending
  deliveries (sampled about once a second by each running worker).
- ``flagrail_webhook_worker_errors_total``: worker passes that raised.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["DELIVERIES", "LAG", "OUTBOX_DEPTH", "WORKER_ERRORS"]

DELIVERIES = Counter(
    "flagrail_webhook_deliveries",
    "Webhook delivery attempts by result.",
    ["result"],
)
LAG = Histogram(
    "flagrail_webhook_delivery_lag_seconds",
    "Seconds from a change's commit to its webhook's successful delivery.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
OUTBOX_DEPTH = Gauge(
    "flagrail_webhook_outbox_depth",
    "Webhook events not yet delivered (outbox rows plus pending deliveries).",
)
WORKER_ERRORS = Counter(
    "flagrail_webhook_worker_errors",
    "Webhook worker passes that raised an exception.",
)
