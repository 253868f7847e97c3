"""Turning pydantic validation errors into one readable line."""

from __future__ import annotations


def describe_validation_errors(errors: object) -> str:
    """'q: Field required; alternatives: Input should be greater than or equal to 0'."""
    parts = []
    for error in errors if isinstance(errors, (list, tuple)) else []:
        location = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query"))
        parts.append(f"{location or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
