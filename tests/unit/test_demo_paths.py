"""The demo's flow and how `python -m demo` reads a document's path from DescribeRun."""

from __future__ import annotations

from pathlib import Path

import yaml
from google.protobuf import json_format

from demo.__main__ import BLUEPRINT, REVIEWS, Outcome, run_path
from tideflow.api.v1 import blueprint_pb2, common_pb2, flow_service_pb2, run_pb2
from tideflow.blueprint import validate

DOCUMENTS = Path(__file__).resolve().parents[2] / "demo" / "documents"
SKIPPED = common_pb2.BLOCK_STATUS_SKIPPED
SUCCEEDED = common_pb2.BLOCK_STATUS_SUCCEEDED
FAILED = common_pb2.BLOCK_STATUS_FAILED
RUNNING = common_pb2.BLOCK_STATUS_RUNNING


def _described(*blocks: run_pb2.BlockSummary) -> flow_service_pb2.DescribeRunResponse:
    return flow_service_pb2.DescribeRunResponse(blocks=blocks)


def _block(block_id: str, status: common_pb2.BlockStatus.ValueType) -> run_pb2.BlockSummary:
    return run_pb2.BlockSummary(block_id=block_id, status=status)


def _pages(count: int) -> list[run_pb2.BlockSummary]:
    """A map item's blocks as DescribeRun lists them (`pages[<index>].<id>`)."""
    return [
        _block(f"pages[{i}].{b}", SUCCEEDED) for i in range(count) for b in ("dates", "parties")
    ]


def test_the_demo_blueprint_passes_registration_checks() -> None:
    message = json_format.ParseDict(
        yaml.safe_load(BLUEPRINT.read_text()), blueprint_pb2.Blueprint()
    )
    assert validate(message) == []


def test_the_reviewers_answer_documents_of_the_demo() -> None:
    assert set(REVIEWS) <= {p.name for p in DOCUMENTS.glob("*.txt")}


def test_a_confident_document_skips_the_review() -> None:
    skipped = _block("human_review", SKIPPED)
    skipped.skip_reason = "needs route, which chose none of its targets"
    path = run_path(_described(skipped, *_pages(2), _block("file", SUCCEEDED)))
    assert path == "auto -> 2 pages -> filed"


def test_reviewed_and_escalated_reviews() -> None:
    review = _block("human_review", SUCCEEDED)
    assert run_path(_described(review, *_pages(1))) == "reviewed by signal -> 1 page"
    review.escalated.append("notify_reviewer")
    assert run_path(_described(review)) == "escalated to notify_reviewer, then reviewed by signal"


def test_a_review_that_waits_or_timed_out() -> None:
    waiting = _block("human_review", RUNNING)
    waiting.waiting.signal.signal_name = "review"
    assert run_path(_described(waiting)) == "waiting for review"
    timed_out = _block("human_review", FAILED)
    timed_out.routed, timed_out.route = True, "fallback_label"
    path = run_path(_described(timed_out, *_pages(1), _block("file", SUCCEEDED)))
    assert path == "timed out -> fallback_label -> 1 page -> filed"


def test_a_failed_filing_and_its_compensations() -> None:
    unindex, release = _block("unindex", SUCCEEDED), _block("release", FAILED)
    unindex.compensates, release.compensates = "index", "reserve"
    described = _described(
        _block("human_review", SKIPPED), *_pages(1), _block("file", FAILED), unindex, release
    )
    path = "auto -> 1 page -> file failed -> compensated index by unindex, reserve by release"
    assert run_path(described) == path
    assert Outcome("x.txt", "FAILED", path).compensated
    assert not Outcome("x.txt", "FAILED", "auto -> 1 page -> file failed").compensated
