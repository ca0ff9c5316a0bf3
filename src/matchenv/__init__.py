"""matchenv: a Kubernetes operator that fans one RabbitMQ match feed out to per-environment workers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("matchenv")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"
