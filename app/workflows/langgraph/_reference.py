"""Static reference data: ISO 3166-1 countries, accepted currencies, USD rates.

Private to the workflow package; the public names are re-exported where the
domain needs them (``state.ALLOWED_CURRENCIES``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType

__all__ = (
    "ALLOWED_CURRENCIES",
    "ISO_COUNTRIES",
    "USD_PER_UNIT",
    "stable_fraction",
    "to_usd",
)

# The officially assigned ISO 3166-1 alpha-2 codes, as in tzdata's iso3166.tab.
_ISO_COUNTRY_TABLE = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM
    BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX
    CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG
    GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR
    IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV
    LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE
    NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO
    RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF
    TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF
    WS YE YT ZA ZM ZW
"""
#: Every officially assigned ISO 3166-1 alpha-2 code (249 codes).
ISO_COUNTRIES: frozenset[str] = frozenset(_ISO_COUNTRY_TABLE.split())

#: US dollars per unit of each accepted currency. Static simulation rates: the
#: engine only needs an order of magnitude to apply USD-denominated limits.
USD_PER_UNIT: Mapping[str, Decimal] = MappingProxyType(
    {
        "AUD": Decimal("0.66"),
        "CAD": Decimal("0.73"),
        "CHF": Decimal("1.13"),
        "DKK": Decimal("0.15"),
        "EUR": Decimal("1.08"),
        "GBP": Decimal("1.27"),
        "JPY": Decimal("0.0067"),
        "NOK": Decimal("0.094"),
        "SEK": Decimal("0.096"),
        "SGD": Decimal("0.74"),
        "USD": Decimal("1"),
    }
)

#: The ISO 4217 codes a transaction may be denominated in.
ALLOWED_CURRENCIES: frozenset[str] = frozenset(USD_PER_UNIT)

_TWO_POW_64 = float(2**64)


def to_usd(amount: Decimal, currency: str) -> Decimal:
    """Convert an amount to US dollars at the static simulation rate.

    Args:
        amount: The amount in ``currency``.
        currency: An ISO 4217 code from :data:`ALLOWED_CURRENCIES`.

    Returns:
        The amount in US dollars.

    Raises:
        ValueError: If the currency is not accepted.
    """
    try:
        rate = USD_PER_UNIT[currency]
    except KeyError:
        raise ValueError(f"unsupported currency {currency!r}") from None
    return amount * rate


def stable_fraction(*parts: str | int) -> float:
    """Map the parts onto ``[0, 1)`` with BLAKE2b, the same way in every process.

    Python's ``hash()`` is salted per process, so it cannot drive routing or
    simulated faults that must be reproducible.

    Args:
        *parts: Values identifying the draw, e.g. a purpose tag, a seed and a
            request id. They are separated unambiguously before hashing.

    Returns:
        A deterministic fraction in ``[0, 1)``.
    """
    digest = hashlib.blake2b(
        "\x1f".join(str(part) for part in parts).encode("utf-8"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") / _TWO_POW_64
