"""Generate the MatchEnvironment CRD (and its defaulting policy) from the pydantic models.

Pydantic's JSON schema is turned into a Kubernetes *structural* schema: ``$ref``s inlined, ``Optional`` unwrapped,
titles dropped, nested objects defaulted to ``{}`` so their own defaults apply, and ``x-kubernetes-*`` extensions
kept. ``crds/`` holds the rendered output; a unit test fails when it falls behind the models.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from matchenv.api import (
    API_GROUP,
    API_VERSION,
    CATEGORIES,
    KIND,
    MAX_ENVIRONMENT_NAME,
    PLURAL,
    QUEUE_PREFIX,
    SHORT_NAMES,
    SINGULAR,
    MatchEnvironmentSpec,
    MatchEnvironmentStatus,
    cel,
)

JsonSchema = dict[str, Any]

# JSON-schema keywords a structural schema may carry through unchanged.
_KEPT = {
    "type", "description", "default", "enum", "format", "pattern", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems", "required", "nullable",
}
_NULL = {"type": "null"}


def _resolve(node: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    """Inline a ``$ref`` / single ``allOf`` / ``Optional`` wrapper, keeping the outer node's own keys."""
    outer = dict(node)
    if "$ref" in outer:
        target = defs[outer.pop("$ref").rsplit("/", 1)[-1]]
        return _resolve({**target, **outer}, defs)
    if "allOf" in outer and len(outer["allOf"]) == 1:
        inner = outer.pop("allOf")[0]
        return _resolve({**inner, **outer}, defs)
    if "anyOf" in outer and not outer.get("x-kubernetes-int-or-string"):
        branches = [b for b in outer["anyOf"] if b != _NULL]
        if len(branches) == 1:
            outer.pop("anyOf")
            return _resolve({**branches[0], **outer}, defs)
    return outer


def structural(node: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    """Convert one pydantic JSON-schema node into a structural OpenAPI v3 schema node."""
    src = _resolve(node, defs)
    out: JsonSchema = {}
    for key, value in src.items():
        if key in _KEPT or key.startswith("x-kubernetes-"):
            out[key] = value
        elif key == "const":
            out["enum"] = [value]
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if out.get("default", ...) is None:
        del out["default"]
    default = out.get("default")
    if isinstance(default, bool | int | str) and "description" in out:
        # kubectl explain does not print defaults; say it in the description.
        shown = str(default).lower() if isinstance(default, bool) else repr(default) if isinstance(default, str) \
            else str(default)
        out["description"] = f"{out['description']} Defaults to {shown}."
    if "properties" in src:
        required = set(src.get("required", []))
        props: JsonSchema = {}
        for name, prop in src["properties"].items():
            converted = structural(prop, defs)
            # A nested model built by default_factory: default it to its fields' defaults (the API server checks a
            # default against the object's CEL rules before nested defaulting, so {} would not do).
            if name not in required and "default" not in prop and converted.get("type") == "object" \
                    and "properties" in converted:
                converted = _ordered({**converted, "default": _nested_default(converted)}, _NODE_ORDER)
            props[name] = converted
        out["properties"] = props
        out["type"] = "object"
    if isinstance(src.get("additionalProperties"), dict):
        out["additionalProperties"] = structural(src["additionalProperties"], defs)
        out["type"] = "object"
    if "items" in src:
        out["items"] = structural(src["items"], defs)
    if out.get("enum") and "type" not in out:
        out["type"] = "string"
    if "x-kubernetes-validations" in out:
        out["x-kubernetes-validations"] = [_ordered(rule, _RULE_ORDER) for rule in out["x-kubernetes-validations"]]
    return _ordered(out, _NODE_ORDER)


def _nested_default(node: JsonSchema) -> JsonSchema:
    """The object an absent nested property defaults to: each child's own default."""
    return {name: child["default"] for name, child in node["properties"].items() if "default" in child}


_NODE_ORDER = ("type", "description", "default", "enum", "format")
_RULE_ORDER = ("rule", "message", "fieldPath", "reason")


def _ordered(node: JsonSchema, first: tuple[str, ...]) -> JsonSchema:
    """Put the keys a reader looks for first at the top; nested ``properties``/``items`` last."""
    last = ("required", "x-kubernetes-validations", "properties", "additionalProperties", "items")
    keys = [k for k in first if k in node]
    keys += sorted(k for k in node if k not in first and k not in last)
    keys += [k for k in last if k in node]
    return {k: node[k] for k in keys}


def model_schema(model: type[BaseModel]) -> JsonSchema:
    """A model's structural schema, by alias (camelCase), in validation mode."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def _printer_columns() -> list[JsonSchema]:
    def col(name: str, path: str, typ: str = "string", priority: int = 0, desc: str = "") -> JsonSchema:
        column: JsonSchema = {"name": name, "type": typ, "jsonPath": path}
        if desc:
            column["description"] = desc
        if priority:
            column["priority"] = priority
        return column

    return [
        # from status: set by the operator on every cluster, with or without the defaulting policy
        col("Queue", ".status.queue", desc="The environment's queue, as the operator declared it."),
        col("Ready", ".status.ready", desc="Ready/desired worker pods."),
        col("Messages", ".status.messages", "integer", desc="Messages waiting or in flight."),
        col("Dead", ".status.deadLetterMessages", "integer", desc="Messages in the dead-letter queue."),
        col("Consumers", ".status.consumers", "integer", desc="Consumers on the queue."),
        col("Phase", ".status.phase", desc="Pending, Ready, Paused, Degraded or Deleting."),
        col("Expires", ".status.expiresAt", desc="When the operator deletes it (spec.expireAfter)."),
        col("Age", ".metadata.creationTimestamp", "date"),
        col("Exchange", ".spec.exchange.name", priority=1, desc="The exchange the queue is bound to."),
        col("Error", ".status.lastError", priority=1, desc="The last reconcile error."),
    ]


def build_crd() -> JsonSchema:
    """The MatchEnvironment CustomResourceDefinition as a dict."""
    spec = model_schema(MatchEnvironmentSpec)
    status = model_schema(MatchEnvironmentStatus)
    root: JsonSchema = {
        "type": "object",
        "description": "MatchEnvironment: one environment fed from the shared match exchange. The operator keeps its "
        "RabbitMQ queue, binding, dead-letter queue, broker user and worker Deployment, and reports them in status.",
        "required": ["spec"],
        "x-kubernetes-validations": [
            cel(f"size(self.metadata.name) <= {MAX_ENVIRONMENT_NAME}",
                f"metadata.name must be at most {MAX_ENVIRONMENT_NAME} characters: it names the queue, the broker "
                "user and the worker Deployment"),
        ],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of this object: matchenv.io/v1alpha1."},
            "kind": {"type": "string", "description": "Kind of this object: MatchEnvironment."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "listKind": f"{KIND}List",
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.workers.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": _printer_columns(),
                }
            ],
        },
    }


POLICY_NAME = "matchenv-queue-name-default"


def build_defaulting_policy() -> list[JsonSchema]:
    """A MutatingAdmissionPolicy (+ binding) that sets ``spec.queue.name`` to ``matches.<metadata.name>``.

    OpenAPI defaults are static, so this per-object default is set by the API server itself (admissionregistration
    v1, GA in Kubernetes 1.36). On older clusters the operator resolves the same default and reports it in status.
    """
    expression = (
        "has(object.spec.queue) && has(object.spec.queue.name) || object.metadata.name == '' ? Object{} : "
        f"Object{{spec: Object.spec{{queue: Object.spec.queue{{name: '{QUEUE_PREFIX}' + object.metadata.name}}}}}}"
    )
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": POLICY_NAME},
        "spec": {
            "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [API_GROUP],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": [PLURAL],
                    }
                ]
            },
            "mutations": [{"patchType": "ApplyConfiguration", "applyConfiguration": {"expression": expression}}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": POLICY_NAME},
        "spec": {"policyName": POLICY_NAME},
    }
    return [policy, binding]


HEADER = "# Generated by `matchenv crd` from src/matchenv/api.py. Do not edit by hand: run `make crds`.\n"


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated values out in full: a CRD with YAML anchors is legal but hard to read."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(documents: list[JsonSchema]) -> str:
    """YAML documents with the generated-file header."""
    return HEADER + yaml.dump_all(documents, Dumper=_NoAliasDumper, sort_keys=False, width=120)


# Where each rendered document lives, relative to the repository root. ``crds/`` holds both for a plain
# ``kubectl apply -f crds/``; kustomize's base has the CRD only (every supported Kubernetes version serves it) and the
# defaulting policy is an optional component (admissionregistration v1 MutatingAdmissionPolicy: Kubernetes >= 1.36).
CRD_FILES = ("crds/matchenvironments.yaml", "manifests/base/crds/matchenvironments.yaml",
             "charts/matchenv/crds/matchenvironments.yaml")
POLICY_FILES = ("crds/matchenvironments-defaults.yaml",
                "manifests/components/defaulting/matchenvironments-defaults.yaml")


def rendered_files() -> dict[str, str]:
    """Path relative to the repository root → rendered content."""
    crd, policy = render([build_crd()]), render(build_defaulting_policy())
    return {**{path: crd for path in CRD_FILES}, **{path: policy for path in POLICY_FILES},
            CHART_POLICY_TEMPLATE: _chart_policy(policy)}


CHART_POLICY_TEMPLATE = "charts/matchenv/templates/defaulting-policy.yaml"


def _chart_policy(policy: str) -> str:
    """The policy as a chart template: on when the value says so, or ("auto") when the cluster serves the kind."""
    condition = (
        '{{- $mode := toString .Values.defaultingPolicy.enabled }}\n'
        '{{- if or (eq $mode "true") (and (eq $mode "auto") '
        '(.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy")) }}\n'
    )
    return condition + policy + "{{- end }}\n"


def wait_until_served(api: Any, namespace: str = "default", timeout: float = 30.0, defaulting: bool = True) -> None:
    """Block until the API server accepts MatchEnvironments and (``defaulting``) applies the queue-name default.

    The CRD becomes Established and the admission policy is loaded by informers, each a moment after
    ``kubectl apply``; a server-side dry-run create shows when both are in effect. ``api`` is a
    ``kubernetes.client.CustomObjectsApi``. Raises ``TimeoutError`` naming what is still missing.
    """
    import time

    from kubernetes.client.exceptions import ApiException

    probe = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": "crd-ready-probe"},
        "spec": {"workers": {"image": "probe", "databaseSecretRef": {"name": "probe"}}},
    }
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            created = api.create_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, PLURAL, probe, dry_run="All", _request_timeout=5
            )
            if not defaulting or created["spec"].get("queue", {}).get("name") == f"{QUEUE_PREFIX}crd-ready-probe":
                return
            last = "the queue-name defaulting policy is not in effect yet"
        except ApiException as exc:
            last = f"{exc.status} {exc.reason}"
        time.sleep(0.5)
    raise TimeoutError(f"MatchEnvironments not ready after {timeout:.0f}s: {last}")
