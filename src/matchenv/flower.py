"""``matchenv flower``: Flower on one environment's Celery task events (``spec.workers.taskEvents``), with the user
of its Secret ``<env>-events``, which may read those events and nothing else.

Flower is told the environment's names for everything it declares: its event queues and its broadcasts (the
wake-up it sends when it connects, the inspect of the workers page) live under ``<queue>.events``, where that user
has its rights and no worker listens. It runs read-only (no buttons that would try to control workers) and keeps at
most ``max_tasks`` tasks in memory.
"""

from __future__ import annotations

from celery import Celery

MAX_TASKS = 10_000  # tasks Flower keeps in memory (its default, 100,000, grows a pod by hundreds of MB)


def flower_app(broker_url: str, exchange: str) -> Celery:
    """A Celery app that only knows where the environment's events are."""
    app = Celery("matchenv-flower", set_as_current=False)
    app.conf.update(broker_url=broker_url, broker_connection_retry_on_startup=True,
                    event_exchange=exchange, event_queue_prefix=exchange, control_exchange=exchange,
                    accept_content=["json"], worker_hijack_root_logger=False)
    return app


def flower_argv(port: int, address: str, url_prefix: str = "", max_tasks: int = MAX_TASKS) -> list[str]:
    """Flower's command line (options it does not get here may come as FLOWER_* variables: FLOWER_BASIC_AUTH ...)."""
    return ["flower", f"--port={port}", f"--address={address}", "--read_only=True", "--enable_events=False",
            f"--max_tasks={max_tasks}", "--purge_offline_workers=600",
            *([f"--url_prefix={url_prefix}"] if url_prefix else [])]
