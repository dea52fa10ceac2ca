"""Document blocks: deterministic text processing for the `intake` demo flow.

Each block is a thin `@block` wrapper over a pure function, so the logic is unit-testable
without a server. Queues: `cpu` runs intake, the extractors (once per page), validate, the
reviewer notification and the archive blocks (reserve, index, file and their compensations
release and unindex); `ml` runs classify. The archive is pretend: its blocks compute their
answers from their input and keep no state, so a retried or repeated attempt answers the same.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from tideflow.errors import ApplicationError
from tideflow.worker import block, context

LABELS = ("invoice", "receipt", "contract", "letter")

# -- intake ------------------------------------------------------------------------------

_PAGE_BREAK = re.compile(r"^\s*-{3,}\s*page\s+\d+\s*-{3,}\s*$|\f", re.IGNORECASE | re.MULTILINE)
_OCR_FIXES = (
    (re.compile(r"(?<=\d)[Oo](?=\d)"), "0"),  # 1O0 -> 100
    (re.compile(r"(?<=\d)[lI](?=\d)"), "1"),  # 2l5 -> 215
    (re.compile(r"\b[l1]nvoice\b", re.IGNORECASE), "Invoice"),
    (re.compile(r"\bT[O0]TAL\b"), "TOTAL"),
    (re.compile(r"[ \t]+,"), ","),
)


def split_pages(text: str) -> list[str]:
    """Pages separated by form feeds or `--- page N ---` lines; at least one page."""
    pages = [p.strip() for p in _PAGE_BREAK.split(text)]
    return [p for p in pages if p] or [""]


def normalise_page(page: str) -> str:
    """NFKC, OCR look-alike repairs, tidy whitespace (line structure is kept)."""
    page = unicodedata.normalize("NFKC", page).replace("\u00a0", " ")
    for pattern, replacement in _OCR_FIXES:
        page = pattern.sub(replacement, page)
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in page.splitlines()]
    collapsed: list[str] = []
    for line in lines:
        if line or (collapsed and collapsed[-1]):
            collapsed.append(line)
    return "\n".join(collapsed).strip()


def normalise(text: str) -> dict[str, Any]:
    pages = [normalise_page(p) for p in split_pages(text)]
    joined = "\n\n".join(pages)
    return {"text": joined, "pages": len(pages), "words": len(re.findall(r"\w+", joined))}


@block("intake", version=1)
async def intake(doc: dict[str, Any]) -> dict[str, Any]:
    """Normalise the raw text page by page, heartbeating after each page. `pages` lists the
    normalised pages (the flow maps over them), `text` joins them."""
    pages = split_pages(str(doc.get("text", "")))
    cleaned: list[str] = []
    for number, page in enumerate(pages, start=1):
        cleaned.append(normalise_page(page))
        await context().heartbeat({"page": number, "of": len(pages)})
    joined = "\n\n".join(cleaned)
    return {
        "name": doc.get("name", ""),
        "text": joined,
        "pages": cleaned,
        "words": len(re.findall(r"\w+", joined)),
    }


# -- classify ----------------------------------------------------------------------------

_FEATURES: dict[str, tuple[tuple[str, float], ...]] = {
    "invoice": (
        (r"\binvoice\b", 3.0),
        (r"\binvoice (?:no|number|#)", 2.0),
        (r"\bbill to\b", 2.0),
        (r"\bdue date\b|\bpayment terms\b|\bnet \d+\b", 1.5),
        (r"\bsubtotal\b", 1.0),
        (r"\bvat\b|\btax\b", 0.5),
        (r"\bamount due\b|\bbalance due\b", 1.5),
    ),
    "receipt": (
        (r"\breceipt\b", 3.0),
        (r"\bthank you for (?:your (?:purchase|visit)|shopping)\b", 2.0),
        (r"\bcash\b|\bcard\b|\bvisa\b|\bmastercard\b|\bchange\b", 1.0),
        (r"\bcashier\b|\bregister\b|\bstore\b|\btill\b", 1.5),
        (r"\bsubtotal\b", 0.5),
    ),
    "contract": (
        (r"\bagreement\b", 2.5),
        (r"\bwhereas\b", 2.0),
        (r"\bparties\b|\bparty\b", 1.5),
        (r"\bterm(?:ination)?\b", 1.0),
        (r"\bgoverning law\b|\bshall\b|\bhereby\b|\bindemnif", 1.0),
        (r"\bin witness whereof\b|\bsignature\b", 1.5),
    ),
    "letter": (
        (r"^dear\b", 3.0),
        (r"\b(?:yours (?:sincerely|faithfully)|sincerely|kind regards|best regards)\b", 2.5),
        (r"\bre:", 1.0),
        (r"\bi am writing\b|\bplease (?:let me know|find)\b", 1.5),
    ),
}
_MIN_SCORE = 3.0
_TEMPERATURE = 3.0  # softens the softmax so confidences stay informative


def classify_text(text: str) -> dict[str, Any]:
    """Weighted keyword features per label, softmax over the scores for a confidence.

    A document whose best score stays under `_MIN_SCORE` is "unknown"."""
    lowered = text.lower()
    scores: dict[str, float] = {}
    for label, features in _FEATURES.items():
        score = 0.0
        for pattern, weight in features:
            hits = len(re.findall(pattern, lowered, re.MULTILINE))
            score += weight * min(hits, 3) ** 0.5  # diminishing returns for repeats
        scores[label] = round(score, 2)
    best = max(scores, key=lambda k: scores[k])
    if scores[best] < _MIN_SCORE:
        return {"label": "unknown", "confidence": 0.0, "scores": scores}
    exps = {k: math.exp(v / _TEMPERATURE) for k, v in scores.items()}
    confidence = exps[best] / sum(exps.values())
    return {"label": best, "confidence": round(confidence, 2), "scores": scores}


@block("classify", version=1)
def classify(doc: dict[str, Any]) -> dict[str, Any]:
    return classify_text(str(doc.get("text", "")))


# -- extract_amounts ---------------------------------------------------------------------

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d{2})?|\d+(?:\.\d{2})?"
_AMOUNT = re.compile(
    rf"(?:(?P<sym>[$€£])\s?|\b(?P<code>USD|EUR|GBP)\s?)(?P<num>{_NUM})\b"
    rf"|\b(?P<num2>{_NUM})\s?(?P<code2>USD|EUR|GBP|€)"
)
_SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP"}
_NOT_ITEM = re.compile(
    r"total|tax|vat|due|paid|balance|change|tendered|cash|card|visa|deposit|fee cap",
    re.IGNORECASE,
)


def _cents(number: str) -> int:
    whole, _, frac = number.replace(",", "").partition(".")
    return int(whole) * 100 + int((frac + "00")[:2])


def find_amounts(text: str) -> dict[str, Any]:
    """Every currency amount, plus line items, subtotal, tax and total where lines say so.

    Amounts are reported in major units (float, 2 decimals); sums are done in cents."""
    amounts: list[dict[str, Any]] = []
    items: list[int] = []
    subtotal = tax = total = None
    for line in text.splitlines():
        found = list(_AMOUNT.finditer(line))
        if not found:
            continue
        for m in found:
            currency = _SYMBOLS.get(m["sym"] or "", "") or m["code"] or m["code2"] or ""
            amounts.append(
                {
                    "value": _cents(m["num"] or m["num2"]) / 100,
                    "currency": _SYMBOLS.get(currency, currency),
                }
            )
        last = _cents(found[-1]["num"] or found[-1]["num2"])
        lowered = line.lower()
        if "subtotal" in lowered:
            subtotal = last
        elif re.search(r"\b(?:tax|vat)\b", lowered):
            tax = last
        elif re.search(r"\btotal\b|\bamount due\b|\bbalance due\b", lowered):
            total = last
        elif not _NOT_ITEM.search(line):
            items.append(last)
    currencies = sorted({a["currency"] for a in amounts if a["currency"]})
    return {
        "amounts": amounts,
        "currency": currencies[0] if len(currencies) == 1 else ("MIXED" if currencies else None),
        "line_items": [c / 100 for c in items],
        "subtotal": None if subtotal is None else subtotal / 100,
        "tax": None if tax is None else tax / 100,
        "total": None if total is None else total / 100,
    }


@block("extract_amounts", version=1)
def extract_amounts(doc: dict[str, Any]) -> dict[str, Any]:
    return find_amounts(str(doc.get("text", "")))


# -- extract_dates -----------------------------------------------------------------------

_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_MONTH = r"(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DATE_PATTERNS = (
    re.compile(r"\b(?P<year>\d{4})-(?P<mnum>\d{2})-(?P<day>\d{2})\b"),
    re.compile(rf"\b{_MONTH}\s+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<year>\d{{4}})\b", re.I),
    re.compile(
        rf"\b(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH},?\s+(?P<year>\d{{4}})\b", re.I
    ),
)


def find_dates(text: str) -> dict[str, Any]:
    """ISO (2024-03-15) and written (March 15, 2024 / 15th of March 2024) dates, as ISO
    strings in order of first appearance; impossible dates are dropped."""
    found: list[tuple[int, str]] = []
    for pattern in _DATE_PATTERNS:
        for m in pattern.finditer(text):
            groups = m.groupdict()
            month = int(groups["mnum"]) if groups.get("mnum") else _MONTHS[groups["month"].lower()]
            try:
                date = dt.date(int(groups["year"]), month, int(groups["day"]))
            except ValueError:
                continue
            found.append((m.start(), date.isoformat()))
    dates: list[str] = []
    for _, iso in sorted(found):
        if iso not in dates:
            dates.append(iso)
    return {"dates": dates, "earliest": min(dates) if dates else None}


@block("extract_dates", version=1)
def extract_dates(doc: dict[str, Any]) -> dict[str, Any]:
    return find_dates(str(doc.get("text", "")))


# -- extract_parties ---------------------------------------------------------------------

_NAME = r"[A-Z][\w&'.-]*(?: (?:& )?[A-Z][\w&'.-]*){0,4}"
_COMPANY = re.compile(
    rf"\b(?P<name>{_NAME}),?\s+(?P<suffix>Inc|LLC|Ltd|Limited|GmbH|Corp|Corporation|plc|S\.A|B\.V|Co)\b\.?"
)
_LABELLED = re.compile(
    r"^(?:from|to|bill to|billed to|sold to|vendor|supplier|customer|client|seller|buyer)"
    r"\s*:\s*(?P<name>[A-Z][^\n,]{1,60})",
    re.IGNORECASE | re.MULTILINE,
)
_DEAR = re.compile(r"^Dear\s+(?P<name>[A-Z][\w.' -]{1,40}?)\s*[,:]?\s*$", re.MULTILINE)


def find_parties(text: str) -> dict[str, Any]:
    """Company names (by legal suffix), names after labels (Bill To:, Vendor:, ...) and
    letter addressees; deduplicated, in order of appearance."""
    hits: list[tuple[int, str]] = []
    for m in _COMPANY.finditer(text):
        name = re.sub(r"^(?:and|between|by|the)\s+", "", m["name"], flags=re.I)
        hits.append((m.start(), f"{name} {m['suffix']}".replace(" Co", " Co.")))
    for pattern in (_LABELLED, _DEAR):
        for m in pattern.finditer(text):
            hits.append((m.start("name"), m["name"].strip().rstrip(".")))
    parties: list[str] = []
    for _, name in sorted(hits):
        key = name.lower().rstrip(".")
        if not any(key in p.lower() or p.lower().rstrip(".") in key for p in parties):
            parties.append(name)
    return {"parties": parties}


@block("extract_parties", version=1)
def extract_parties(doc: dict[str, Any]) -> dict[str, Any]:
    return find_parties(str(doc.get("text", "")))


# -- validate ----------------------------------------------------------------------------


def validate_document(
    label: str,
    confidence: float,
    amounts: dict[str, Any] | None,
    dates: dict[str, Any] | None,
    parties: dict[str, Any] | None,
) -> dict[str, Any]:
    """Consistency rules per label; `amounts` is None when extraction was skipped."""
    issues: list[str] = []
    date_list = (dates or {}).get("dates") or []
    party_list = (parties or {}).get("parties") or []
    if label == "unknown":
        issues.append("document type not recognised; needs manual review")
    elif confidence < 0.6:
        issues.append(f"low classification confidence ({confidence:.2f})")
    if label in ("invoice", "receipt"):
        a = amounts or {}
        total, subtotal, tax = a.get("total"), a.get("subtotal"), a.get("tax")
        items: list[float] = a.get("line_items") or []
        if total is None:
            issues.append(f"{label} has no total amount")
        if not date_list:
            issues.append(f"{label} has no date")
        if a.get("currency") == "MIXED":
            issues.append("amounts in more than one currency")
        expected = subtotal if subtotal is not None else total
        if subtotal is not None and total is not None:
            sum_ = round((subtotal + (tax or 0.0)) * 100)
            if sum_ != round(total * 100):
                issues.append(f"subtotal {subtotal:.2f} + tax {tax or 0:.2f} != total {total:.2f}")
        if items and expected is not None:
            items_sum = sum(round(i * 100) for i in items)
            if items_sum != round(expected * 100):
                issues.append(
                    f"line items sum to {items_sum / 100:.2f}, "
                    f"{'subtotal' if subtotal is not None else 'total'} says {expected:.2f}"
                )
        if label == "invoice" and not party_list:
            issues.append("invoice names no parties")
    if label == "contract":
        if len(party_list) < 2:
            issues.append("contract needs at least two parties")
        if not date_list:
            issues.append("contract has no date")
    if label == "letter" and not party_list:
        issues.append("letter has no addressee")
    return {"valid": not issues, "issues": issues}


def merge_pages(pages: list[dict[str, Any] | None]) -> dict[str, Any]:
    """One document's extraction from its pages' (the flow's `pages` map output, in page
    order): amounts and line items in page order, subtotal, tax and total from the last page
    that states them, dates and parties deduplicated in order. `amounts` is None when no page
    extracted amounts (the flow skips that for documents that are no invoice or receipt)."""
    found = [p for p in pages if p]
    per_page = [p["amounts"] for p in found if p.get("amounts")]
    amounts: dict[str, Any] | None = None
    if per_page:
        values = [a for page in per_page for a in page.get("amounts") or []]
        currencies = sorted({a["currency"] for a in values if a.get("currency")})
        amounts = {
            "amounts": values,
            "currency": currencies[0]
            if len(currencies) == 1
            else ("MIXED" if currencies else None),
            "line_items": [i for page in per_page for i in page.get("line_items") or []],
        }
        for key in ("subtotal", "tax", "total"):
            stated = [page[key] for page in per_page if page.get(key) is not None]
            amounts[key] = stated[-1] if stated else None
    dates = list(dict.fromkeys(d for p in found for d in p.get("dates") or []))
    parties: list[str] = []
    for name in (n for p in found for n in p.get("parties") or []):
        if name.lower() not in (known.lower() for known in parties):
            parties.append(name)
    return {"amounts": amounts, "dates": dates, "parties": parties}


@block("validate", version=1)
def validate(doc: dict[str, Any]) -> dict[str, Any]:
    """The label the flow settled on and the pages' extraction -> the verdict, with the merged
    extraction (amounts, dates, parties) that the verdict is about."""
    label = doc.get("label") or {}
    merged = merge_pages(doc.get("pages") or [])
    verdict = validate_document(
        str(label.get("label", "unknown")),
        float(label.get("confidence", 0.0)),
        merged["amounts"],
        {"dates": merged["dates"]},
        {"parties": merged["parties"]},
    )
    return {**verdict, **merged}


# -- human review ------------------------------------------------------------------------


@block("notify", version=1)
def notify(doc: dict[str, Any]) -> dict[str, Any]:
    """Escalation of a review nobody answered: tell the second reviewer (the demo logs it)."""
    return {"notified": str(doc.get("reviewer", "")), "document": str(doc.get("document", ""))}


# -- archive (reserve, index, file; release and unindex undo them) -------------------------


def archive_id(document: str) -> str:
    """The archive slot of a document: stable, so a retried reservation gets the same one."""
    return "ARC-" + hashlib.sha256(document.encode()).hexdigest()[:8].upper()


@block("reserve", version=1)
def reserve(doc: dict[str, Any]) -> dict[str, Any]:
    return {"archive_id": archive_id(str(doc.get("document", "")))}


@block("release", version=1)
def release(doc: dict[str, Any]) -> dict[str, Any]:
    """Compensation of `reserve`: gives the slot back."""
    return {"released": str(doc.get("archive_id", ""))}


@block("index", version=1)
def index(doc: dict[str, Any]) -> dict[str, Any]:
    """Search-index entry for the archived document: its label, dates and parties."""
    terms = [str(doc.get("label", "")), *(doc.get("dates") or []), *(doc.get("parties") or [])]
    return {"archive_id": str(doc.get("archive_id", "")), "terms": [t for t in terms if t]}


@block("unindex", version=1)
def unindex(doc: dict[str, Any]) -> dict[str, Any]:
    """Compensation of `index`: removes the entry."""
    return {"unindexed": str(doc.get("archive_id", "")), "terms": len(doc.get("terms") or [])}


def ledger_refusal(label: str, amounts: dict[str, Any] | None) -> str | None:
    """Why the ledger refuses to post an invoice or receipt, if it does: it posts only
    amounts that add up (subtotal + tax = total, when all three are stated)."""
    if label not in ("invoice", "receipt") or not amounts:
        return None
    subtotal, tax, total = amounts.get("subtotal"), amounts.get("tax"), amounts.get("total")
    if subtotal is None or tax is None or total is None:
        return None
    if round((subtotal + tax) * 100) == round(total * 100):
        return None
    return (
        f"ledger refuses the {label}: subtotal {subtotal:.2f} + tax {tax:.2f} != total {total:.2f}"
    )


@block("file", version=1)
def file(doc: dict[str, Any]) -> dict[str, Any]:
    """Files the document in its archive slot, posting invoices and receipts to the ledger.
    A refusal is final (non-retryable): the flow then undoes what it did (compensations)."""
    label = str(doc.get("label", ""))
    refusal = ledger_refusal(label, doc.get("amounts"))
    if refusal is not None:
        raise ApplicationError(refusal, type="LedgerRefused", non_retryable=True)
    posted = label in ("invoice", "receipt") and bool(doc.get("amounts"))
    return {"archive_id": str(doc.get("archive_id", "")), "ledger": posted}


CPU_BLOCKS: list[Callable[..., Any]] = [
    intake,
    extract_amounts,
    extract_dates,
    extract_parties,
    validate,
    notify,
    reserve,
    release,
    index,
    unindex,
    file,
]
ML_BLOCKS: list[Callable[..., Any]] = [classify]
BLOCKS_BY_QUEUE: dict[str, list[Callable[..., Any]]] = {"cpu": CPU_BLOCKS, "ml": ML_BLOCKS}
