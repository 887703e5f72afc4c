import pytest

from shipyard.data.pii import iban_ok, luhn_ok, scrub

CAUGHT = [
    ("write to jane.doe+news@mail.example.co.uk today", "email"),
    ("call +44 20 7946 0958 today", "phone"),
    ("call +1-202-555-0143", "phone"),
    ("office (555) 123-4567", "phone"),
    ("Tel: 030 1234 5678", "phone"),
    ("card 4111 1111 1111 1111 on file", "credit_card"),
    ("amex 3782-822463-10005", "credit_card"),
    ("mc 5555555555554444", "credit_card"),
    ("iban GB82 WEST 1234 5698 7654 32", "iban"),
    ("iban DE89370400440532013000", "iban"),
    ("host 192.168.1.10 is down", "ip"),
    ("dns 8.8.8.8", "ip"),
    ("v6 2001:db8:85a3::8a2e:370:7334", "ip"),
]

LOOK_ALIKES = [
    "card 4111 1111 1111 1112 fails Luhn",
    "iban GB82 WEST 1234 5698 7654 33 fails mod 97",
    "python 3.11.7 and release 1.2.3.4.5 and 999.1.1.1",
    "version 10.0.19041.1",
    "isbn 978-0-306-40615-7 dated 2024-01-15",
    "unix time 1700000000 and order id 12345678901",
    "ref 12-34-56, zip 90210-1234, port 8080",
    "a::b is a C++ scope, not an address",
    "user@localhost has no domain",
    "price 1,234,567.89",
]


@pytest.mark.parametrize("text,kind", CAUGHT, ids=[k + str(i) for i, (_, k) in enumerate(CAUGHT)])
def test_pii_is_replaced_by_its_typed_placeholder(text, kind):
    out, counts = scrub(text)
    assert dict(counts) == {kind: 1}
    assert f"<{ {'ip': 'IP_ADDRESS'}.get(kind, kind.upper())}>" in out


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_look_alikes_survive(text):
    assert scrub(text) == (text, {})


def test_only_the_requested_kinds_are_scrubbed():
    out, counts = scrub("mail a@b.org from 10.0.0.1", kinds=["ip"])
    assert out == "mail a@b.org from <IP_ADDRESS>" and dict(counts) == {"ip": 1}


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")
    assert not iban_ok("GB82WEST1234569876543")  # wrong length for GB
