"""`GET /metrics` in the Prometheus text format, read from the store at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ref2img.protocol import TaskStatus
from ref2img.server.services import Services


class _TaskCollector:
    def __init__(self, services: Services):
        self._services = services

    def collect(self):
        counts = self._services.store.count_by_status()
        by_status = GaugeMetricFamily("ref2img_tasks", "Tasks in the store by status", labels=["status"])
        for status in TaskStatus:
            by_status.add_metric([status.name.lower()], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily("ref2img_queue_depth", "Tasks waiting for a worker",
                                value=counts.get(TaskStatus.QUEUED, 0))
        yield GaugeMetricFamily("ref2img_task_seconds_estimate", "Moving average of task run time",
                                value=self._services.estimate.seconds)
        yield GaugeMetricFamily("ref2img_workers", "Worker threads in this process",
                                value=self._services.settings.workers)
        yield GaugeMetricFamily("ref2img_engine_loaded", "1 once the engine is loaded",
                                value=1 if self._services.engine.state == "loaded" else 0)


def render(services: Services) -> bytes:
    registry = CollectorRegistry()
    registry.register(_TaskCollector(services))
    return generate_latest(registry)
