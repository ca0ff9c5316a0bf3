"""The mission end to end: one YAML adds an environment, and the next scrape reaches its database through worker
pods the operator created: containers of the project's image on the real node, reaching the broker and the database
through the ``rabbitmq`` and ``postgres`` Services' DNS names."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from matchenv_devkit.services.process import wait_for
from tests.e2e.harness import secret_value
from tests.e2e.pipeline import Pipeline, real_node_pipeline_fixture


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    yield from real_node_pipeline_fixture(tmp_path_factory.mktemp("pipeline"))


def test_prod_and_dev_receive_every_scraped_match(pipeline: Pipeline) -> None:
    pipeline.apply("prod")
    pipeline.apply("dev")
    pipeline.wait_ready("prod", "dev")
    pods = pipeline.kubectl.get_json("pods", "-l", "matchenv.io/environment=dev")["items"]
    assert pods
    assert all(p["status"]["phase"] == "Running" for p in pods)
    # containers on the real node, from the project's image, non-root with a read-only root filesystem
    assert all(p["spec"]["nodeName"] == "matchenv-node" for p in pods)
    statuses = [s for p in pods for s in p["status"]["containerStatuses"]]
    assert all(s["image"].endswith("matchenv:0.1.0") and s["containerID"].startswith("containerd://")
               for s in statuses)
    # the workers reach the broker by the Service's DNS name
    url = urlsplit(secret_value(pipeline.kubectl, "default", "dev-broker", "url"))
    assert (url.hostname, url.port) == ("rabbitmq.matchenv-system.svc.cluster.local", 5672)
    result = pipeline.scrape("--synthetic", "500")
    assert result.returncode == 0, result.stderr
    assert "confirmed 500" in result.stdout
    pipeline.wait_rows({"prod": 500, "dev": 500})


def test_applying_staging_adds_an_environment_that_starts_with_the_data_and_gets_the_next_scrape(
        pipeline: Pipeline) -> None:
    pipeline.apply("staging")  # the example: backfill.since 168h
    pipeline.wait_ready("staging")
    result = pipeline.scrape("--synthetic", "200", "--start", "500")
    assert result.returncode == 0, result.stderr
    pipeline.wait_rows({"prod": 700, "dev": 700, "staging": 700})
    assert pipeline.duplicates("staging") == 0
    lines = pipeline.kubectl.run("get", "matchenvironments").stdout.splitlines()
    print("\n" + "\n".join(lines))
    assert all(line.split()[-2] == "Ready" for line in lines[1:])


def test_queue_flag_reaches_one_environment_and_no_submit_none(pipeline: Pipeline) -> None:
    result = pipeline.scrape("--synthetic", "10", "--seed", "99", "--queue", "matches.prod")
    assert result.returncode == 0, result.stderr
    pipeline.wait_rows({"prod": 710, "dev": 700, "staging": 700})
    result = pipeline.scrape("--synthetic", "10", "--seed", "98", "--no-submit-queue")
    assert result.returncode == 0
    assert "published 0" in result.stdout
    pipeline.wait_rows({"prod": 710, "dev": 700, "staging": 700}, timeout=10)


def test_deleted_environment_gets_nothing_more(pipeline: Pipeline) -> None:
    pipeline.kubectl.run("delete", "menv", "dev", "--timeout=90s", timeout=120)
    assert pipeline.queue_depth("matches.dev") is None  # deletionPolicy: Delete
    result = pipeline.scrape("--synthetic", "100", "--start", "700")
    assert result.returncode == 0, result.stderr
    pipeline.wait_rows({"prod": 810, "dev": 700, "staging": 800})


def test_with_no_environment_bound_the_scrape_fails_as_unroutable(pipeline: Pipeline) -> None:
    pipeline.kubectl.run("delete", "menv", "prod", "staging", "--timeout=90s", timeout=120)
    assert pipeline.queue_depth("matches.prod") is not None  # Retain: the queue stays, unbound
    result = pipeline.scrape("--synthetic", "5", "--start", "800")
    assert result.returncode == 1
    assert "5 matches were unroutable" in result.stderr
    # the management API's counts trail by up to one stats interval: wait for them to read 0
    wait_for(lambda: pipeline.queue_depth("matches.prod") == 0, timeout=10, what="nothing queued for prod")
