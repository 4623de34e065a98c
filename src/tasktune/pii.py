"""Find strings that look like personal data or secrets in row text: e-mail addresses, phone numbers, API keys and
card numbers. Used by `tasktune check`, which counts and locates them and never prints one in full.

Regular expressions rather than an NER model, on purpose: these four kinds have fixed shapes (an `@` and a domain, a
run of digits in phone groupings, a vendor key prefix, 13-19 digits that pass the Luhn check), a scan must take
microseconds per row to keep 100,000 rows under a minute, and tasktune ships no model weights for it. Free-form
personal data (names, street addresses) has no fixed shape and is not looked for; the report says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("email", "phone", "api-key", "card")

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b"
)
# Digit groups separated by spaces, dots or dashes, optionally with +country code and an (area) code. Candidates are
# then filtered by digit count (9-15, ITU E.164) and by shapes that are dates, times, versions or IP addresses.
_PHONE = re.compile(
    r"(?<![\w.+/:-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,5}){1,4}(?![\w/:]|[.-]\d)"
)
_DATE_OR_IP = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$|^\d{1,3}(?:\.\d{1,3}){3}$")
# A US ZIP+4 code ("33312-1038") has a phone's digit count but its own fixed 5-4 shape, which no numbering plan uses.
_ZIP_PLUS_4 = re.compile(r"^\d{5}-\d{4}$")
# Vendor prefixes with their documented shapes, and `key = value` assignments of long secrets.
_VENDOR_KEY = re.compile(
    r"(?<![\w-])(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic
    r"|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}"  # GitHub
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google
    r"|hf_[A-Za-z0-9]{30,})"  # Hugging Face
)
_ASSIGNED_SECRET = re.compile(
    r"\b(?:api[_-]?key|secret|access[_-]?token|auth[_-]?token|password|passwd)\b[\"']?\s*[:=]\s*[\"']?"
    r"[A-Za-z0-9_\-./+=]{12,}",
    re.IGNORECASE,
)
_SECRET_WORDS = ("key", "secret", "token", "passw")
_DIGITS = re.compile(r"\d{2}")
_CARD = re.compile(r"(?<![\d.-])\d(?:[ -]?\d){12,18}(?![\d-]|\.\d)")
# Issuer prefixes (IIN ranges) of the major card networks: Visa, Mastercard, Amex, Discover, Diners, JCB.
_CARD_IIN = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|3[068]|6(?:011|5|4[4-9])|35)")


@dataclass(frozen=True)
class Match:
    kind: str
    masked: str  # enough to find it in the row, never the whole value


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number carries (ISO/IEC 7812-1)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _mask(value: str, keep_start: int, keep_end: int) -> str:
    if len(value) <= keep_start + keep_end + 2:
        return value[:1] + "…"
    return f"{value[:keep_start]}…{value[len(value) - keep_end :] if keep_end else ''} ({len(value)} chars)"


def scan(text: str) -> list[Match]:
    """Every e-mail, phone, API key and card number in `text`, masked."""
    found: list[Match] = []
    taken: list[tuple[int, int]] = []
    if "@" in text:
        for m in _EMAIL.finditer(text):
            user, domain = m.group().split("@", 1)
            found.append(Match("email", f"{user[:1]}…@…{domain[domain.rfind('.') :]}"))
            taken.append(m.span())
    if _DIGITS.search(text):
        for m in _CARD.finditer(text):
            digits = re.sub(r"\D", "", m.group())
            if 13 <= len(digits) <= 19 and _CARD_IIN.match(digits) and luhn_ok(digits) and len(set(digits)) > 1:
                found.append(Match("card", f"card …{digits[-4:]}"))
                taken.append(m.span())
        for m in _PHONE.finditer(text):
            if any(a < m.end() and m.start() < b for a, b in taken):
                continue
            value = m.group()
            n_digits = sum(c.isdigit() for c in value)
            if not 9 <= n_digits <= 15 or _DATE_OR_IP.match(value) or _ZIP_PLUS_4.match(value):
                continue
            if not (value.startswith(("+", "(")) or re.search(r"\d[ .-]\d", value)):
                continue
            found.append(Match("phone", _mask(value, 2, 2)))
    keys = list(_VENDOR_KEY.finditer(text))
    lower = text.lower()
    if any(w in lower for w in _SECRET_WORDS):  # the case-insensitive pattern is slow: run it only where it can match
        keys += _ASSIGNED_SECRET.finditer(text)
    found += [Match("api-key", _mask(m.group(), 4, 0)) for m in keys]
    return found
