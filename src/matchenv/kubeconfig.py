"""The Kubernetes API client of the command-line tools (``matchenv dlq``, ``matchenv status``): in a pod its
ServiceAccount, else the kubeconfig (``--kubeconfig``/``KUBECONFIG``, ``--context``), and the namespace it names."""

from __future__ import annotations

import os

from kubernetes import client, config


class KubeconfigError(Exception):
    """No usable kubeconfig (the input is at fault)."""


def api_client(kubeconfig: str | None, context: str | None) -> tuple[client.ApiClient, str]:
    """An API client and the namespace the kubeconfig's context names (``default`` if none)."""
    configuration = client.Configuration()
    if not kubeconfig and not context and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get(
            "KUBECONFIG"):
        config.load_incluster_config(client_configuration=configuration)
        try:
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                namespace = f.read().strip() or "default"
        except OSError:
            namespace = "default"
    else:
        try:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
            _contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        except (config.ConfigException, OSError) as exc:
            raise KubeconfigError(f"no usable kubeconfig: {exc}") from exc
        chosen = next((c for c in _contexts if c["name"] == context), active) if context else active
        namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
    configuration.retries = 1
    return client.ApiClient(configuration), namespace
