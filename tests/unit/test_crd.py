"""The CRD in crds/ is what the models generate, documents every field, and agrees with the models field by field."""

from __future__ import annotations

import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import annotated_types
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from matchenv.api import MatchEnvironmentSpec, MatchEnvironmentStatus
from matchenv.crd import build_crd, build_defaulting_policy, rendered_files

ROOT = Path(__file__).resolve().parents[2]


def _root() -> dict[str, Any]:
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("path", sorted(rendered_files()))
def test_committed_crds_match_the_models(path: str) -> None:
    assert (ROOT / path).read_text() == rendered_files()[path], f"{path} is stale: run `make crds`"


def _walk(node: dict[str, Any], path: str) -> typing.Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_every_field_has_a_description() -> None:
    undocumented = [
        path for path, node in _walk(_root(), "")
        if path not in {".metadata"} and not path.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert undocumented == []


def test_schema_is_structural() -> None:
    for path, node in _walk(_root(), ""):
        assert not {"$ref", "anyOf", "allOf", "oneOf", "title"} & node.keys(), path
        if not node.get("x-kubernetes-int-or-string"):
            assert "type" in node, f"{path} has no type"
        if "properties" in node:
            assert "additionalProperties" not in node, path


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """Strip Optional/Annotated: (inner type, optional?)."""
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(annotation))
            if len(args) != 1:
                return annotation, optional
            annotation = args[0]
        else:
            return annotation, optional


def _bound(info: FieldInfo, kind: type[annotated_types.Ge] | type[annotated_types.Le]) -> Any:
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge) and kind is annotated_types.Ge:
            return meta.ge
        if isinstance(meta, annotated_types.Le) and kind is annotated_types.Le:
            return meta.le
    return None


def _compare(model: type[BaseModel], schema: dict[str, Any], path: str, checked: list[str]) -> None:
    assert schema.get("type") == "object", path
    props = schema["properties"]
    assert set(props) == {info.alias or name for name, info in model.model_fields.items()}, path
    required = set(schema.get("required", []))
    for name, info in model.model_fields.items():
        key = info.alias or name
        where = f"{path}.{key}"
        prop = props[key]
        checked.append(where)
        assert (key in required) == info.is_required(), f"{where}: required differs"
        assert info.description, f"{where}: the model field has no description"
        assert prop.get("description", "").startswith(info.description), f"{where}: description differs"
        inner, _ = _unwrap(info.annotation)
        if info.default is not PydanticUndefined and info.default is not None:
            expected = info.default.value if isinstance(info.default, Enum) else info.default
            assert prop.get("default") == expected, f"{where}: default differs"
            assert "Defaults to" in prop["description"], f"{where}: the description does not say the default"
        elif info.default_factory is not None:
            default = info.default_factory().model_dump(by_alias=True, exclude_none=True, mode="json")  # type: ignore[call-arg]
            assert prop.get("default") == default, f"{where}: nested defaults must apply"
        else:
            assert "default" not in prop, f"{where}: unexpected default"
        assert prop.get("minimum") == _bound(info, annotated_types.Ge), f"{where}: minimum differs"
        assert prop.get("maximum") == _bound(info, annotated_types.Le), f"{where}: maximum differs"
        if isinstance(inner, type) and issubclass(inner, Enum):
            assert prop["enum"] == [m.value for m in inner], f"{where}: enum differs"
        elif typing.get_origin(inner) is typing.Literal:
            assert prop["enum"] == list(typing.get_args(inner)), f"{where}: enum differs"
        elif isinstance(inner, type) and issubclass(inner, BaseModel):
            _compare(inner, prop, where, checked)
        elif typing.get_origin(inner) is list:
            item, _ = _unwrap(typing.get_args(inner)[0])
            assert prop["type"] == "array", where
            if isinstance(item, type) and issubclass(item, BaseModel):
                _compare(item, prop["items"], f"{where}[]", checked)
        else:
            expected_type = {bool: "boolean", int: "integer", str: "string", dict: "object"}.get(
                typing.get_origin(inner) or inner
            )
            if expected_type:
                assert prop["type"] == expected_type, f"{where}: type differs"


@pytest.mark.parametrize(("model", "key"), [(MatchEnvironmentSpec, "spec"), (MatchEnvironmentStatus, "status")])
def test_crd_agrees_with_the_model_field_by_field(model: type[BaseModel], key: str) -> None:
    checked: list[str] = []
    _compare(model, _root()["properties"][key], key, checked)
    assert len(checked) >= 15


def test_crd_names_subresources_and_columns() -> None:
    crd = build_crd()
    assert crd["spec"]["names"]["shortNames"] == ["menv"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.workers.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    shown = [c["name"].upper() for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert shown == ["QUEUE", "READY", "MESSAGES", "DEAD", "CONSUMERS", "PHASE", "EXPIRES", "AGE"]


def test_defaulting_policy_targets_matchenvironments() -> None:
    policy, binding = build_defaulting_policy()
    rule = policy["spec"]["matchConstraints"]["resourceRules"][0]
    assert rule["resources"] == ["matchenvironments"]
    assert "'matches.' + object.metadata.name" in policy["spec"]["mutations"][0]["applyConfiguration"]["expression"]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
