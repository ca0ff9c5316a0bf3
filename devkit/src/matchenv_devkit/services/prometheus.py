"""A real Prometheus (Debian's package) on loopback scraping given targets with the project's rules loaded, and the
rules file read out of the monitoring component's PrometheusRule (its ``spec`` is a plain Prometheus rules file)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import requests
import yaml

from matchenv_devkit.cluster.images import REPO_ROOT
from matchenv_devkit.services.process import ChildProcess, free_port, wait_for

MONITORING = REPO_ROOT / "manifests" / "components" / "monitoring"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboard.json"


def rules(source: Path = PROMETHEUS_RULE, *, annotations: bool = True, replace: dict[str, str] | None = None,
          for_: str | None = None) -> dict[str, Any]:
    """The rule groups of the PrometheusRule at ``source``; without ``annotations`` for promtool's unit tests (which
    compare annotations exactly); each ``replace`` old → new applied to every ``expr``, and every alert's ``for``
    set to ``for_`` (a test may shorten a threshold or a duration it cannot wait for)."""
    spec: dict[str, Any] = yaml.safe_load(source.read_text())["spec"]
    for group in spec["groups"]:
        for rule in group["rules"]:
            if not annotations:
                rule.pop("annotations", None)
            for old, new in (replace or {}).items():
                rule["expr"] = str(rule["expr"]).replace(old, new)
            if for_ is not None and "alert" in rule:
                rule["for"] = for_
    return spec


def dashboard_queries(source: Path = DASHBOARD, namespace: str = ".*") -> dict[str, str]:
    """Every PromQL query of the Grafana dashboard at ``source`` by ``<panel title>/<refId>``, with its
    ``$namespace`` variable set to ``namespace`` (a regular expression: all of them by default)."""
    panels = json.loads(source.read_text())["panels"]
    return {f"{p['title']}/{t['refId']}": t["expr"].replace("$namespace", namespace)
            for p in panels for t in p.get("targets", [])}


def write_rules(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


Target = tuple[str, dict[str, str]]  # host:port, and the labels to put on its series


class PrometheusServer:
    """``prometheus`` with its own config and TSDB under ``state_dir``, scraping each job's targets from a file it
    watches (:meth:`set_targets`, as service discovery would hand them over), with ``rules_spec`` loaded."""

    def __init__(self, state_dir: Path, jobs: dict[str, bool], rules_spec: dict[str, Any] | None = None,
                 interval: str = "2s") -> None:
        """``jobs``: job name → honor_labels (true for the operator: its series carry the environment's labels)."""
        self.state_dir = state_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.jobs = jobs
        self.rules_spec = rules_spec
        self.interval = interval
        self.process = ChildProcess(state_dir / "prometheus.log")

    @staticmethod
    def binary() -> str:
        found = shutil.which("prometheus")
        if not found:
            raise RuntimeError("prometheus not found: `make system-deps` installs Debian's prometheus package")
        return found

    def _targets_file(self, job: str) -> Path:
        return self.state_dir / "targets" / f"{job}.json"

    def set_targets(self, job: str, targets: list[Target]) -> None:
        """Replace ``job``'s targets (written atomically; Prometheus reads the file when it changes)."""
        path = self._targets_file(job)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps([{"targets": [t], "labels": labels} for t, labels in targets]))
        partial.replace(path)

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "scrape_configs": [
                {"job_name": job, "honor_labels": honor,
                 "file_sd_configs": [{"files": [str(self._targets_file(job))], "refresh_interval": "5s"}]}
                for job, honor in self.jobs.items()],
        }
        if self.rules_spec is not None:
            config["rule_files"] = [str(write_rules(self.state_dir / "rules.yaml", self.rules_spec))]
        return config

    def start(self, timeout: float = 60) -> PrometheusServer:
        (self.state_dir / "targets").mkdir(parents=True, exist_ok=True)
        for job in self.jobs:
            if not self._targets_file(job).exists():
                self.set_targets(job, [])
        config = self.state_dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self._config(), sort_keys=False))
        self.process.spawn([self.binary(), f"--config.file={config}", f"--storage.tsdb.path={self.state_dir / 'data'}",
                            f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"], env={})
        wait_for(lambda: requests.get(f"{self.url}/-/ready", timeout=2).ok, timeout=timeout,
                 what=f"prometheus ready on {self.url}")
        return self

    def stop(self) -> None:
        self.process.stop(timeout=15)

    def _api(self, path: str, params: dict[str, str] | None = None, timeout: float = 10) -> Any:
        """The ``data`` of one HTTP API answer (ValueError with Prometheus's message when it refused the call)."""
        answer = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=timeout).json()
        if answer.get("status") != "success":
            raise ValueError(f"{path} {params}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now."""
        result: list[dict[str, Any]] = self._api("query", {"query": expr})["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = {"query": expr, "start": str(start), "end": str(end), "step": str(step)}
        result: list[dict[str, Any]] = self._api("query_range", params, timeout=30)["result"]
        return result

    def firing(self, alertname: str) -> list[dict[str, str]]:
        """The labels of each ``alertname`` alert firing now (not those still pending)."""
        alerts: list[dict[str, Any]] = self._api("alerts")["alerts"]
        return [a["labels"] for a in alerts if a["labels"].get("alertname") == alertname and a["state"] == "firing"]
