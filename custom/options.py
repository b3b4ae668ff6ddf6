"""Command-line option values as configs receive them."""

__all__ = ["flag"]

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


def flag(value) -> bool:
    """A boolean option: ``True``/``False`` or the strings a shell passes (``--save_masks false`` arrives as text)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected a true/false option value, got {value!r}")
