"""Form bodies, urlencoded or multipart, as each field's values.

Starlette reads an urlencoded body as Latin-1, whatever its charset: `curl -d 'q=fährt'` sends the
UTF-8 bytes of "ä" as they are, and the model got "fÃ¤hrt". Here such a body is decoded in the charset
it declares, UTF-8 if none, as browsers and curl send it; multipart bodies, whose parts Starlette
decodes in the declared charset, are left to it.
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
        charset = _charset(request.headers.get("content-type", ""))
        try:
            text = (await request.body()).decode(charset)
            pairs = parse_qsl(text, keep_blank_values=True, encoding=charset, errors="strict")
        except (LookupError, UnicodeError):  # LookupError: no such charset
            raise undecodable from None
        fields: dict[str, list[Any]] = {}
        for name, value in pairs:
            fields.setdefault(name, []).append(value)
        return fields
    try:
        form = await request.form()
    except UnicodeError:  # e.g. charset=punycode, whose decoding error Starlette does not catch
        raise undecodable from None
    except HTTPException as error:  # Starlette's 400 for a malformed multipart body
        raise FormError(f"form data is malformed: {error.detail}") from None
    return {name: form.getlist(name) for name in form}


def _charset(content_type: str) -> str:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"') or "utf-8"
    return "utf-8"
