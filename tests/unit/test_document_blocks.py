"""The demo's document blocks, called directly as pure functions (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tideflow.errors import ApplicationError
from workers.documents.blocks import (
    archive_id,
    classify,
    classify_text,
    file,
    find_amounts,
    find_dates,
    find_parties,
    index,
    ledger_refusal,
    merge_pages,
    normalise,
    notify,
    release,
    reserve,
    unindex,
    validate,
    validate_document,
)

DOCUMENTS = Path(__file__).resolve().parents[2] / "demo" / "documents"

INVOICE = """ACME Industrial Supply Inc.
INVOICE
Invoice No: INV-7
Invoice date: 2024-03-15
Due date: April 14, 2024 (Net 30)
Bill To: Brightline Logistics LLC
Pallet wrap          $540.00
Strapping kit        $285.50
Subtotal             $825.50
Tax                  $74.30
Total amount due     $899.80
"""


def test_classify_invoice() -> None:
    result = classify_text(INVOICE)
    assert result["label"] == "invoice"
    assert 0.5 < result["confidence"] <= 1.0


def test_classify_unknown_and_block_wrapper() -> None:
    assert classify_text("Lunch on Friday? Bring snacks.")["label"] == "unknown"
    assert classify({"text": "Dear Sam,\nI am writing to say hello.\nKind regards"})["label"] == (
        "letter"
    )


def test_classify_sample_documents() -> None:
    expected = {
        "invoice_acme_2024-03.txt": "invoice",
        "receipt_blue_bottle.txt": "receipt",
        "contract_consulting_agreement.txt": "contract",
        "letter_lease_renewal.txt": "letter",
        "scan_invoice_ocr.txt": "invoice",
        "meeting_notes.txt": "unknown",
    }
    for name, label in expected.items():
        text = normalise((DOCUMENTS / name).read_text())["text"]
        assert classify_text(text)["label"] == label, name


def test_extract_amounts() -> None:
    amounts = find_amounts(INVOICE)
    assert amounts["currency"] == "USD"
    assert amounts["line_items"] == [540.0, 285.5]
    assert (amounts["subtotal"], amounts["tax"], amounts["total"]) == (825.5, 74.3, 899.8)
    assert find_amounts("Fee: EUR 18,000 and 1.250 GBP")["amounts"][0] == {
        "value": 18000.0,
        "currency": "EUR",
    }


def test_extract_dates() -> None:
    assert find_dates(INVOICE)["dates"] == ["2024-03-15", "2024-04-14"]
    text = "Signed 3rd of June 2024; renew by Feb 29, 2024; not a date: 2023-02-30."
    assert find_dates(text) == {"dates": ["2024-06-03", "2024-02-29"], "earliest": "2024-02-29"}


def test_extract_parties() -> None:
    text = 'made between Meridian Health Systems Inc. ("Client") and Quarry Analytics GmbH'
    assert find_parties(text)["parties"] == ["Meridian Health Systems Inc", "Quarry Analytics GmbH"]
    assert find_parties(INVOICE)["parties"] == [
        "ACME Industrial Supply Inc",
        "Brightline Logistics LLC",
    ]


def test_normalise_pages_and_ocr_noise() -> None:
    result = normalise("lnvoice   total 1O0\n--- page 2 ---\nT0TAL  due")
    assert result["pages"] == 2
    assert result["text"] == "Invoice total 100\n\nTOTAL due"
    assert result["words"] == 5


def test_validate_good_invoice() -> None:
    verdict = validate_document(
        "invoice", 0.9, find_amounts(INVOICE), find_dates(INVOICE), find_parties(INVOICE)
    )
    assert verdict == {"valid": True, "issues": []}


def test_validate_flags_invoice_without_amount() -> None:
    text = "INVOICE\nInvoice date: 2024-03-15\nBill To: Lakeside Dental Clinic\nServices rendered"
    verdict = validate({"label": {"label": "invoice", "confidence": 0.9}, "pages": [_page(text)]})
    assert verdict["valid"] is False
    assert "invoice has no total amount" in verdict["issues"]


def test_validate_flags_line_items_mismatch_and_skipped_amounts() -> None:
    text = INVOICE.replace("$285.50", "$295.50")
    verdict = validate_document("invoice", 0.9, find_amounts(text), find_dates(text), None)
    assert not verdict["valid"]
    assert any("line items sum to 835.50" in issue for issue in verdict["issues"])
    # A letter's amounts block is skipped by the flow's `when`: amounts arrive as None.
    letter = validate_document("letter", 0.8, None, {"dates": []}, {"parties": ["Ms. Okafor"]})
    assert letter == {"valid": True, "issues": []}


def _page(text: str) -> dict[str, object]:
    """One item of the flow's `pages` map output."""
    return {
        "amounts": find_amounts(text),
        "dates": find_dates(text)["dates"],
        "parties": find_parties(text)["parties"],
    }


def test_merge_pages_keeps_page_order_and_the_last_stated_totals() -> None:
    first, second = INVOICE.split("Subtotal")
    second = "Subtotal" + second + "\nBill To: brightline logistics llc"
    merged = merge_pages([_page(first), _page(second)])
    amounts = merged["amounts"]
    assert amounts["line_items"] == [540.0, 285.5]
    assert (amounts["subtotal"], amounts["tax"], amounts["total"]) == (825.5, 74.3, 899.8)
    assert amounts["currency"] == "USD"
    assert merged["dates"] == ["2024-03-15", "2024-04-14"]
    # The same party named on two pages is listed once, as first written.
    assert merged["parties"] == ["ACME Industrial Supply Inc", "Brightline Logistics LLC"]


def test_merge_pages_without_amounts_and_with_a_tolerated_empty_page() -> None:
    page = {"amounts": None, "dates": ["2024-01-08"], "parties": ["Quarry Analytics GmbH"]}
    merged = merge_pages([page, None])
    assert merged == {
        "amounts": None,
        "dates": ["2024-01-08"],
        "parties": ["Quarry Analytics GmbH"],
    }


def test_validate_takes_the_settled_label_and_the_pages() -> None:
    verdict = validate(
        {
            "label": {"label": "invoice", "confidence": 1.0, "source": "review by ann"},
            "pages": [_page(INVOICE)],
        }
    )
    assert verdict["valid"] is True
    assert verdict["amounts"]["total"] == 899.8
    assert verdict["parties"] == ["ACME Industrial Supply Inc", "Brightline Logistics LLC"]
    low = validate({"label": {"label": "invoice", "confidence": 0.34}, "pages": [_page(INVOICE)]})
    assert low["issues"] == ["low classification confidence (0.34)"]


def test_filing_posts_only_amounts_that_add_up() -> None:
    assert file({"archive_id": "ARC-1", "label": "invoice", "amounts": find_amounts(INVOICE)}) == {
        "archive_id": "ARC-1",
        "ledger": True,
    }
    assert file({"archive_id": "ARC-2", "label": "letter", "amounts": None})["ledger"] is False
    # No total to check against: filed, as validation already flagged it.
    assert ledger_refusal("invoice", find_amounts("Subtotal $10.00\nTax $1.00")) is None
    text = (DOCUMENTS / "invoice_northwind_mismatch.txt").read_text()
    with pytest.raises(ApplicationError) as refused:
        file({"archive_id": "ARC-3", "label": "invoice", "amounts": find_amounts(text)})
    assert refused.value.type == "LedgerRefused"
    assert refused.value.non_retryable
    assert str(refused.value) == (
        "ledger refuses the invoice: subtotal 373.40 + tax 72.68 != total 436.08"
    )


def test_archive_blocks_answer_from_their_input() -> None:
    slot = reserve({"document": "a.txt"})
    assert slot == reserve({"document": "a.txt"}) != reserve({"document": "b.txt"})
    assert slot["archive_id"] == archive_id("a.txt")
    assert release(slot) == {"released": slot["archive_id"]}
    entry = index({**slot, "label": "letter", "dates": ["2024-09-12"], "parties": ["Ms. Okafor"]})
    assert entry["terms"] == ["letter", "2024-09-12", "Ms. Okafor"]
    assert unindex(entry) == {"unindexed": slot["archive_id"], "terms": 3}
    assert notify({"document": "a.txt", "reviewer": "second reviewer"}) == {
        "notified": "second reviewer",
        "document": "a.txt",
    }


def test_low_confidence_sample_documents_go_to_review() -> None:
    """The demo's flow asks for a review under 0.6: these three, and only these."""
    low = set()
    for path in sorted(DOCUMENTS.glob("*.txt")):
        if classify_text(normalise(path.read_text())["text"])["confidence"] < 0.6:
            low.add(path.name)
    assert low == {"scan_invoice_ocr.txt", "meeting_notes.txt", "delivery_note_smudged.txt"}
