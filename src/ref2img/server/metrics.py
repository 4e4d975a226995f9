"""`GET /metrics` in the Prometheus text format, read from the store at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ref2img.protocol import TaskStatus
from ref2img.server.services import Services


class _TaskCollector:
    def __init__(self, services: Services):
        self._services = services

    def collect(self):
        counts = self._services.store.tasks.count_by_status()
        by_status = GaugeMetricFamily("ref2img_tasks", "Tasks in the store by status", labels=["status"])
        for status in TaskStatus:
            by_status.add_metric([status.name.lower()], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily(
            "ref2img_queue_depth", "Tasks waiting for a worker", value=counts.get(TaskStatus.QUEUED, 0)
        )
        routes, fallbacks = self._services.store.tasks.route_counts()
        by_route = GaugeMetricFamily(
            "ref2img_tasks_by_route", "Tasks in the store by route (local GPUs or the Tomoviee cloud)", labels=["route"]
        )
        for route in ("local", "cloud"):
            by_route.add_metric([route], routes.get(route, 0))
        yield by_route
        yield CounterMetricFamily(
            "ref2img_cloud_fallbacks", "Tasks the cloud never took, moved back to the local queue", value=fallbacks
        )
        yield GaugeMetricFamily(
            "ref2img_task_seconds_estimate", "Moving average of task run time", value=self._services.estimate.seconds
        )
        services = self._services
        yield GaugeMetricFamily(
            "ref2img_workers", "Workers taking tasks from this queue", value=services.worker_count()
        )
        if not services.settings.embedded:
            depth = services.queue.depth()
            if depth is not None:
                yield GaugeMetricFamily("ref2img_broker_queue_depth", "Messages waiting in Redis", value=depth)
            done = CounterMetricFamily("ref2img_worker_tasks", "Tasks finished per worker", labels=["worker"])
            step = GaugeMetricFamily(
                "ref2img_worker_step_seconds", "Mean engine step time per worker", labels=["worker"]
            )
            rate = GaugeMetricFamily(
                "ref2img_worker_tasks_per_busy_second", "Throughput per worker while busy", labels=["worker"]
            )
            for row in services.store.fleet.alive(within_s=3 * services.settings.lease_s):
                done.add_metric([row.id], row.tasks_done)
                step.add_metric([row.id], row.step_s / row.steps if row.steps else 0.0)
                rate.add_metric([row.id], row.tasks_done / row.busy_s if row.busy_s else 0.0)
            yield done
            yield step
            yield rate
        yield GaugeMetricFamily(
            "ref2img_engine_loaded",
            "1 once the engine is loaded",
            value=1 if self._services.engine.state.loaded else 0,
        )


def render(services: Services) -> bytes:
    registry = CollectorRegistry()
    registry.register(_TaskCollector(services))
    return generate_latest(registry)
