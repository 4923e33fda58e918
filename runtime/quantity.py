"""Kubernetes resource quantities ("500m", "32861620Ki", "1.5G") as Decimals.

The same rules as kubernetes.utils.parse_quantity (the Python client's reading of apimachinery's
resource.Quantity), here so the runtime does not need the synchronous `kubernetes` client, 120 MB installed,
for this one function.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

# apimachinery's Quantity holds an int64 of its unit at most (9.2e18): a quantity of more digits is no quantity.
_MAX_DIGITS = 19
_EXPONENTS = {"n": -3, "u": -2, "m": -1, "K": 1, "k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


def parse_quantity(quantity: str | int | float | Decimal) -> Decimal:
    """A quantity in canonical form (base 1024: Ki Mi Gi Ti Pi Ei; base 1000: n u m k M G T P E) as a Decimal;
    ValueError names what is wrong."""
    if isinstance(quantity, bool):
        raise ValueError(f"{quantity} is not a quantity")
    if isinstance(quantity, int | float | Decimal):
        quantity = str(Decimal(quantity))
    quantity = str(quantity)
    number, suffix = quantity, ""
    if len(quantity) >= 2 and quantity[-1] == "i":
        if quantity[-2] in _EXPONENTS:
            number, suffix = quantity[:-2], quantity[-2:]
    elif quantity and quantity[-1] in _EXPONENTS:
        number, suffix = quantity[:-1], quantity[-1]
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"Invalid number format: {number}") from None
    if not value.is_finite() or value.adjusted() > _MAX_DIGITS:
        # NaN would raise in every comparison, and int() of 1e999999999 builds a billion-digit number.
        raise ValueError(f"{quantity} is not a finite quantity of at most {_MAX_DIGITS} digits")
    if not suffix:
        return value
    if suffix.endswith("i"):
        base = 1024
    elif len(suffix) == 1:
        base = 1000
    else:
        raise ValueError(f"{quantity} has unknown suffix")
    if suffix == "ki":  # SI's kilo is k, binary's Ki
        raise ValueError(f"{quantity} has unknown suffix")
    return value * (base ** Decimal(_EXPONENTS[suffix[0]]))


# A suffix → the (numerator, denominator) it multiplies by.
_SCALES = {"": (1, 1), "n": (1, 10**9), "u": (1, 10**6), "m": (1, 1000),
           **{s: (1000**e, 1) for s, e in _EXPONENTS.items() if e > 0},
           **{f"{s}i": (1024**e, 1) for s, e in _EXPONENTS.items() if e > 0 and s != "k"}}


def quantity_int(quantity: str | int | float | Decimal, unit: int = 1) -> int:
    """int(parse_quantity(quantity) * unit), the quantity in whole 1/unit (nanocores of a CPU quantity with unit
    10**9); the integers metrics APIs write ("10000123n", "65536Ki") are read without a Decimal."""
    if type(quantity) is str:
        number = quantity.rstrip("numkKMGTPEi")
        scale = _SCALES.get(quantity[len(number):])
        if scale is not None and number.isascii() and number.isdigit() and len(number) <= _MAX_DIGITS:
            return int(number) * unit * scale[0] // scale[1]
    return int(parse_quantity(quantity) * unit)
