"""A small relative-error quantile sketch (the DDSketch mapping).

Values are counted in logarithmic buckets ``gamma**(i-1) < v <= gamma**i``
with ``gamma = (1 + a) / (1 - a)``; any quantile estimate is then within a
relative error ``a`` of a true sample value at that rank (Masson, Rim & Lee,
"DDSketch", VLDB 2019). Memory is bounded by the value range, not the count:
at ``a = 0.01`` the range from a nanosecond to a day takes at most ~2,500
buckets, and a latency series typically uses a few dozen.

Not thread-safe: each sketch lives inside one collector's store.
"""

from __future__ import annotations

import math

__all__ = ("QuantileSketch",)


class QuantileSketch:
    """Relative-accuracy quantile sketch for non-negative values.

    Args:
        relative_accuracy: The guaranteed relative error ``a`` (0 < a < 1).
    """

    __slots__ = ("_bins", "_count", "_gamma", "_inv_log_gamma", "_max", "_min", "_zero")

    def __init__(self, relative_accuracy: float = 0.01) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError("relative_accuracy must be in (0, 1)")
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._inv_log_gamma = 1.0 / math.log(self._gamma)
        self._bins: dict[int, int] = {}
        self._zero = 0
        self._count = 0
        self._min = math.inf
        self._max = -math.inf

    @property
    def count(self) -> int:
        """Values added so far."""
        return self._count

    def add(self, value: float) -> None:
        """Count one non-negative finite value (the caller has validated it)."""
        self._count += 1
        if value < self._min:
            self._min = value
        if value > self._max:
            self._max = value
        if value <= 0.0:
            self._zero += 1
            return
        index = math.ceil(math.log(value) * self._inv_log_gamma)
        bins = self._bins
        bins[index] = bins.get(index, 0) + 1

    def quantile(self, q: float) -> float | None:
        """Estimate the ``q``-quantile (0 <= q <= 1); ``None`` if empty.

        The estimate for rank ``floor(q * (count - 1))`` (the lower
        nearest-rank definition) is within the relative accuracy of the
        sample at that rank, and always inside ``[min, max]``.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError("q must be in [0, 1]")
        if self._count == 0:
            return None
        rank = math.floor(q * (self._count - 1))
        if rank < self._zero:
            return 0.0  # only zeros are counted there (values are non-negative)
        seen = self._zero
        gamma = self._gamma
        bins = self._bins
        for index in sorted(bins):
            seen += bins[index]
            if seen > rank:
                try:
                    estimate = 2.0 * gamma**index / (gamma + 1.0)
                except OverflowError:  # a bucket just below the largest float
                    estimate = math.inf
                return min(max(estimate, self._min), self._max)
        return self._max  # pragma: no cover - unreachable when counts agree
