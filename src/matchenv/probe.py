"""``python3 -m matchenv.probe PATH``: the worker's readiness probe. Reads ``PATH`` (``/healthz``) of the worker's
own endpoint (``MATCHENV_METRICS_PORT``), prints its answer and exits 0 when it is 200, 1 otherwise. An exec probe
rather than the kubelet's HTTP one because the kubelet keeps an exec probe's output in its ``Unhealthy`` event,
where the operator reads why a worker is not ready (an HTTP probe's event names only the status code).
Standard library only: it starts in a few tens of milliseconds."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from matchenv.contracts import ENV_METRICS_PORT, WORKER_METRICS_PORT


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    port = os.environ.get(ENV_METRICS_PORT) or str(WORKER_METRICS_PORT)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            print(response.read(2000).decode(errors="replace").strip())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read(2000).decode(errors="replace").strip() or f"HTTP {exc.code}")
    except OSError as exc:
        print(f"the worker's health endpoint does not answer on port {port}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
