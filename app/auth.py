"""Access control for a server exposed beyond localhost: optional API keys and per-client rate limits.

Keys come from `MT_API_KEYS` (comma-separated) and the file `MT_API_KEYS_FILE` (one per line); any
key makes one required on the routes that do work (`POST /translate`). A key travels as the body's
`api_key` field (LibreTranslate's), an `X-API-Key` header or `Authorization: Bearer`, never in the URL,
which access logs record. Keys are held only as SHA-256 digests and compared in constant time; no log
line or metric carries one.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import math
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote_plus

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.forms import FORM_TYPES, FormError, form_fields, media_type
from app.rate_limit import RateLimiter
from app.settings import Settings

_HOW = "send it as api_key in the body, an X-API-Key header or Authorization: Bearer"
_COMMENT = re.compile(r"(^|\s)#.*")  # to the end of the line


class ApiKeysError(ValueError):
    """The keys setting or the keys file gives no usable key: the server refuses to start."""


def split_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']: how the comma-separated settings read."""
    return [item.strip() for item in text.split(",") if item.strip()]


def read_keys_file(path: Path) -> list[str]:
    """One key per line; blank lines and comments ('#' at the start of a line or after a space) are skipped."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # Notepad and PowerShell write a byte-order mark
    except FileNotFoundError:
        raise ApiKeysError(f"API keys file {path} does not exist") from None
    except OSError as error:
        raise ApiKeysError(f"API keys file {path} cannot be read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ApiKeysError(f"API keys file {path} is not UTF-8 text") from None
    keys = [key for line in text.splitlines() if (key := _COMMENT.sub("", line).strip())]
    if not keys:
        raise ApiKeysError(f"API keys file {path} holds no key: write one key per line ('#' starts a comment)")
    return keys


def _digest(key: str) -> bytes:
    # surrogatepass: a JSON body's api_key may hold a lone surrogate ("\ud800"); it is then no key, not a 500
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class ApiKeys:
    def __init__(self, keys: list[str]) -> None:
        self._digests = sorted({_digest(key) for key in keys})

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        listed = settings.api_keys.get_secret_value()
        keys = split_list(listed)
        if listed.strip() and not keys:  # set, yet empty: serving openly would not be what was meant
            raise ApiKeysError("MT_API_KEYS holds no key: separate keys with commas")
        if settings.api_keys_file:
            keys += read_keys_file(Path(settings.api_keys_file))
        return cls(keys)

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def identify(self, candidate: str) -> str | None:
        """A name for the key `candidate` is (a digest prefix: safe as a rate-limit identity), or None."""
        digest = _digest(candidate)  # equal lengths, so the comparison says nothing of the key's length
        matched = None
        for known in self._digests:  # every key is compared, whichever matches
            if hmac.compare_digest(known, digest):
                matched = known
        return f"key:{matched.hex()[:16]}" if matched else None


def client_address(request: Request) -> str:
    """The rate-limit identity of a request without a key. An IPv6 client usually holds a whole /64,
    so that is the unit; behind a proxy, uvicorn takes the address from X-Forwarded-For."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"address:{host}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return f"address:{address.ipv4_mapped}"
        return f"address:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"address:{address}"


async def _body_key(request: Request) -> str | None:
    """The body's `api_key` field, JSON or form data (Starlette keeps the body for the route to parse)."""
    if media_type(request) in FORM_TYPES:
        try:
            value = (await form_fields(request)).get("api_key", [None])[0]
        except FormError:  # the route would answer 400, but a request without a key gets no further than 403
            return None
    else:
        try:
            raw = json.loads(await request.body())
        except (ValueError, RecursionError):
            return None  # the route would answer 400, but a request without a key gets no further than 403
        value = raw.get("api_key") if isinstance(raw, dict) else None
    return value if isinstance(value, str) and value else None


class Access:
    """What `require_access` checks: the key, when keys are required, then the client's rate limit."""

    def __init__(self, *, keys: ApiKeys, limiter: RateLimiter | None) -> None:
        self.keys = keys
        self.limiter = limiter

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        per_minute = settings.rate_limit_per_minute
        limiter = RateLimiter(per_minute=per_minute) if per_minute else None
        return cls(keys=ApiKeys.from_settings(settings), limiter=limiter)

    def describe(self) -> str:
        """For the start-up log: how many keys, never which."""
        count = f"{len(self.keys)} key{'' if len(self.keys) == 1 else 's'}"
        keys = f"API key required ({count})" if self.keys.required else "no API key required"
        if self.limiter is None:
            return f"{keys}, no rate limit"
        per = "key" if self.keys.required else "client address"
        return f"{keys}, at most {self.limiter.per_minute} requests per minute per {per}"

    async def check(self, request: Request, header_key: str | None) -> None:
        """Raises 429 over the rate limit, then 403 without a valid key (when keys are required)."""
        presented = key = None
        if self.keys.required:
            presented = header_key or await _body_key(request)
            key = self.keys.identify(presented) if presented else None
        if self.limiter is not None:  # a request without a valid key spends its address's budget
            wait = self.limiter.take(key or client_address(request))
            if wait > 0:
                seconds = max(1, math.ceil(wait))
                raise HTTPException(
                    429,
                    f"rate limit of {self.limiter.per_minute} requests per minute reached: retry in {seconds} s",
                    headers={"Retry-After": str(seconds)},
                )
        if self.keys.required and key is None:
            if presented:
                raise HTTPException(403, "the API key is not valid")
            if "api_key" in request.query_params:
                raise HTTPException(403, f"API keys are not accepted in the URL, which gets logged: {_HOW}")
            raise HTTPException(403, f"an API key is required: {_HOW}")


_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key, when the server requires one")
_BEARER = HTTPBearer(auto_error=False, description="the API key as a bearer token, when the server requires one")


async def require_access(
    request: Request,
    header: Annotated[str | None, Security(_HEADER)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
) -> None:
    """The dependency of the routes that do work (declaring the headers also documents them in /docs)."""
    access: Access = request.app.state.access
    await access.check(request, header or (bearer.credentials if bearer else None))


class RedactKeysInUrls(logging.Filter):
    """Masks `api_key=...` in access-log lines: uvicorn logs each URL with its query string, and a
    client may put a key there even though it is refused."""

    _PARAMETER = re.compile(r"(?P<name>[^?&=\s]+)=[^&\s]*")  # name=value in a query string

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._redact(a) if isinstance(a, str) and "?" in a else a for a in record.args)
        return True

    @classmethod
    def _redact(cls, url: str) -> str:
        path, query = url.split("?", 1)

        def mask(match: re.Match[str]) -> str:  # by the name Starlette reads: %61pi_key is api_key too
            return f"{match['name']}=[redacted]" if unquote_plus(match["name"]).lower() == "api_key" else match[0]

        return f"{path}?{cls._PARAMETER.sub(mask, query)}"


def redact_access_log() -> None:
    """Installs `RedactKeysInUrls` on uvicorn's access log, once per process."""
    access_log = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactKeysInUrls) for f in access_log.filters):
        access_log.addFilter(RedactKeysInUrls())
