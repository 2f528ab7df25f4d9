"""Pure: byte sizes written as ``512M``, ``10G`` or plain integers."""

from __future__ import annotations

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """``"10G"`` -> 10737418240. Raises ValueError naming the accepted forms."""
    if isinstance(text, int):
        value = text
    else:
        raw = str(text).strip().upper().removesuffix("B").removesuffix("I")
        unit = raw[-1:] if raw[-1:] in _UNITS and raw[-1:] else ""
        number = raw[: len(raw) - len(unit)]
        try:
            value = int(float(number) * _UNITS[unit])
        except ValueError:
            raise ValueError(
                f"size {text!r} is not understood: use bytes or a number with K, M, G or T"
            ) from None
    if value < 0:
        raise ValueError(f"size {text!r} is negative")
    return value
