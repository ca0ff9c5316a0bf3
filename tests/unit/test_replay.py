"""Which channel closes the backfill's replay waits out (a stream failing over) and which end it at once."""

import json

import pika.exceptions
import pytest

from matchenv.replay import ReplayReport, failing_over, summary


@pytest.mark.parametrize(("code", "text", "transient"), [
    (406, "PRECONDITION_FAILED - stream queue 'feed.archive' in vhost '/' does not have a running replica on the "
          "local node", True),
    (406, "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'feed.archive'", False),
    (404, "NOT_FOUND - no queue 'feed.archive' in vhost '/'", False),
    (403, "ACCESS_REFUSED - access to queue 'feed.archive' in vhost '/' refused for user 'u'", False),
])
def test_only_a_stream_without_a_running_replica_is_waited_out(code: int, text: str, transient: bool) -> None:
    assert failing_over(pika.exceptions.ChannelClosedByBroker(code, text)) is transient


def test_the_jobs_progress_reads_n_of_about_m_once_the_first_offset_is_known() -> None:
    report = ReplayReport(delivered=1000, end_offset=20019)
    assert report.progress() == "delivered 1000 so far"
    report.first_offset = 20
    assert report.total == 20000
    assert report.progress() == "delivered 1000 of about 20000 (5%)"
    assert json.loads(summary(report))["first_offset"] == 20  # the termination message the operator reads
