"""`quantity_int`, the metrics scrape's quick reading of quantities, reads every quantity as `parse_quantity` does
and refuses what it refuses."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from k8sgpu.runtime.quantity import parse_quantity, quantity_int

from .strategies import quantities


def _either(read):
    try:
        return read()
    except ValueError as exc:
        return ValueError, str(exc)


@given(quantity=quantities | st.from_regex(r"\A[0-9]{0,22}(n|u|m|K|k|Ki|ki|mi|i|)\Z") | st.text(max_size=8),
       unit=st.sampled_from([1, 1000, 10**9]))
@example(quantity="10000123n", unit=10**9)  # metrics-server's CPU
@example(quantity="65536Ki", unit=1)  # and memory
@example(quantity="٣", unit=1)  # a digit to str.isdigit, not to Decimal
def test_quantity_int_is_parse_quantity_times_unit(quantity, unit):
    got = _either(lambda: quantity_int(quantity, unit))
    assert got == _either(lambda: int(parse_quantity(quantity) * unit))
    assert type(got) in (int, tuple)
