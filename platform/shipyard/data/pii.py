"""PII scrubbing: emails, phone numbers, IP addresses, card numbers and IBANs -> typed placeholders.

    >>> scrub("mail jane@example.org or call +44 20 7946 0958")
    ('mail <EMAIL> or call <PHONE>', Counter({'email': 1, 'phone': 1}))

Each kind is a candidate regex plus a validator, so look-alikes survive: a card number must pass
the Luhn check and carry a known issuer prefix, an IBAN must pass ISO 13616 mod-97 with its
country's length, an IPv4 address may not be part of a longer dotted run (version strings), a
phone number must look like an international (+CC), North American or trunk-0 national number
with 10-15 digits (8 with the +), so dates, ISBNs, ids and timestamps survive. Kinds run in a
fixed order (email, card, IBAN, IP, phone) so that a card number is never counted as a phone.
The matched values are never returned or logged, only their counts.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable

PLACEHOLDERS = {"email": "<EMAIL>", "credit_card": "<CREDIT_CARD>", "iban": "<IBAN>", "ip": "<IP_ADDRESS>",
                "phone": "<PHONE>"}

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,6}|[0-9A-Fa-f]{1,4})(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+.-])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"  # international: +44 20 7946 0958
    r"|(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}"  # North American: (555) 123-4567
    r"|0\d{1,4}[ /-]\d{3,4}[ -]?\d{3,4}"  # national with trunk 0: 030 1234 5678
    r")(?![\w-]|\.\d)"
)

# ISO 13616 lengths of the countries that issue most IBANs (others fall back to the mod-97 check).
_IBAN_LENGTHS = {
    "AT": 20, "BE": 16, "CH": 21, "CZ": 24, "DE": 22, "DK": 18, "ES": 24, "FI": 18, "FR": 27, "GB": 22,
    "GR": 27, "HU": 28, "IE": 22, "IT": 27, "LU": 20, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "SE": 24,
}
_CARD_PREFIXES = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|3[0689]|6(?:011|5|4[4-9]|2))")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_ok(match: str) -> bool:
    digits = re.sub(r"[ -]", "", match)
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIXES.match(digits)) and luhn_ok(digits)


def iban_ok(match: str) -> bool:
    """ISO 13616: known length for the country, and the mod-97 remainder of the rearranged number is 1."""
    iban = match.replace(" ", "")
    expected = _IBAN_LENGTHS.get(iban[:2])
    if (expected and len(iban) != expected) or not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _ipv4_ok(match: str) -> bool:
    parts = match.split(".")
    return all(int(p) <= 255 and (p == "0" or not p.startswith("0")) for p in parts)


def _ipv6_ok(match: str) -> bool:
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return sum(bool(g) for g in match.split(":")) >= 3  # "a::b" in code is not an address


def _phone_ok(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return (8 if match.startswith("+") else 10) <= len(digits) <= 15 and len(set(digits)) > 1


_KINDS: dict[str, list[tuple[re.Pattern, Callable[[str], bool] | None]]] = {
    "email": [(_EMAIL, None)],
    "credit_card": [(_CARD, _card_ok)],
    "iban": [(_IBAN, iban_ok)],
    "ip": [(_IPV4, _ipv4_ok), (_IPV6, _ipv6_ok)],
    "phone": [(_PHONE, _phone_ok)],
}
ORDER = tuple(_KINDS)


def scrub(text: str, kinds: Iterable[str] = ORDER) -> tuple[str, Counter]:
    """Replace every validated PII match by its placeholder.

    Returns:
        (scrubbed text, count of replacements per kind).
    """
    counts: Counter = Counter()
    wanted = set(kinds)
    for kind in ORDER:
        if kind not in wanted:
            continue
        for pattern, valid in _KINDS[kind]:
            def repl(m: re.Match, kind=kind, valid=valid) -> str:
                if valid is not None and not valid(m.group(0)):
                    return m.group(0)
                counts[kind] += 1
                return PLACEHOLDERS[kind]

            text = pattern.sub(repl, text)
    return text, counts
