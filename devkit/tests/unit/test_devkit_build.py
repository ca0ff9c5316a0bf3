"""Pure helpers of the control-plane build."""

from __future__ import annotations

import pytest

from matchenv_devkit.cluster.build import staging_modules, staging_version, wrapper_gomod

GOMOD = """module k8s.io/kubernetes

go 1.26.0

require (
\tk8s.io/api v0.0.0
\tgo.etcd.io/etcd/server/v3 v3.6.8 // indirect
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/cri-streaming => ./staging/src/k8s.io/cri-streaming
\tgithub.com/some/fork => github.com/other/fork v1.0.0
)
"""


def test_staging_version() -> None:
    assert staging_version("v1.36.3") == "v0.36.3"
    with pytest.raises(ValueError, match=r"not a Kubernetes 1\.x release"):
        staging_version("v2.0")


def test_staging_modules_reads_only_local_replacements() -> None:
    assert staging_modules(GOMOD) == ["k8s.io/api", "k8s.io/client-go", "k8s.io/cri-streaming"]


def test_wrapper_gomod_replaces_each_staging_module() -> None:
    text = wrapper_gomod("v1.36.3", ["k8s.io/api", "k8s.io/client-go"], "1.26")
    assert "require k8s.io/kubernetes v1.36.3" in text
    assert "\tk8s.io/api => k8s.io/api v0.36.3" in text
    assert "\tk8s.io/client-go => k8s.io/client-go v0.36.3" in text
    assert "go 1.26" in text
