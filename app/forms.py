"""Form bodies, urlencoded or multipart, as each field's values.

Starlette reads an urlencoded body as Latin-1, whatever its charset: `curl -d 'q=fährt'` sends the
UTF-8 bytes of "ä" as they are, and the model got "fÃ¤hrt". Here such a body is decoded in the charset
it declares; without one, as UTF-8, as browsers and curl send it, or as Latin-1 if it is not UTF-8 (what
it was read as before, and what older clients mean). Multipart bodies, whose parts Starlette decodes in
the declared charset, are left to it. A field that holds no text (a lone surrogate, which UTF-7 can
spell) is refused: it would fail the tokenizer, and with it every request in its batch.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from starlette.exceptions import HTTPException

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class FormError(ValueError):
    """The form body cannot be read; the message says why."""


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def form_fields(request: Request) -> dict[str, list[Any]]:
    """Each field's values, in order (a multipart field may hold a file); FormError if unreadable."""
    undecodable = FormError("form data cannot be decoded in the charset it declares")
    if media_type(request) == "application/x-www-form-urlencoded":
        body, declared = await request.body(), _charset(request.headers.get("content-type", ""))
        fields: dict[str, list[Any]] = {}
        try:
            for name, value in _urlencoded(body, declared):
                fields.setdefault(name, []).append(value)
        except (LookupError, UnicodeError):  # LookupError: no such charset
            raise undecodable from None
    else:
        try:
            form = await request.form()
        except UnicodeError:  # e.g. charset=punycode, whose decoding error Starlette does not catch
            raise undecodable from None
        except HTTPException as error:  # Starlette's 400 for a malformed multipart body
            raise FormError(f"form data is malformed: {error.detail}") from None
        fields = {name: form.getlist(name) for name in form}
    for values in fields.values():
        for value in values:
            if isinstance(value, str) and not _is_text(value):
                raise FormError("form data holds a lone UTF-16 surrogate, which is not text")
    return fields


def _urlencoded(body: bytes, declared: str | None) -> list[tuple[str, str]]:
    """name=value pairs, in the declared charset, else UTF-8, else Latin-1 (which decodes any bytes)."""
    if declared:
        return _pairs(body, declared)
    try:
        return _pairs(body, "utf-8")
    except UnicodeDecodeError:
        return _pairs(body, "latin-1")


def _pairs(body: bytes, charset: str) -> list[tuple[str, str]]:
    # the body's own bytes and its %-escapes are both in the charset
    return parse_qsl(body.decode(charset), keep_blank_values=True, encoding=charset, errors="strict")


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _charset(content_type: str) -> str | None:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"') or None
    return None
