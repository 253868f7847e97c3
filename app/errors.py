"""Error answers: pydantic validation errors as one readable line, and a JSON 500 for what nothing else handled."""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("app")


def describe_validation_errors(errors: object) -> str:
    """'q: Field required; alternatives: Input should be greater than or equal to 0'."""
    parts = []
    for error in errors if isinstance(errors, (list, tuple)) else []:
        location = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query"))
        parts.append(f"{location or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def internal_error(method: str, path: str) -> JSONResponse:
    """Log the exception being handled and answer 500, without its details."""
    log.exception("internal error on %s %s", method, path)
    return JSONResponse({"error": "internal server error"}, status_code=500)


class AnswerInternalErrors:
    """ASGI middleware, innermost: an exception that no handler took is logged and answered with a JSON
    500, here, so that the middleware around it sees an answer like any other: CORS adds its headers
    (a browser page then reads the error instead of a blocked response) and the metrics count it.
    Starlette's own catch-all answers from its ServerErrorMiddleware, outside every middleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:  # too late for another answer: the server closes the connection
                raise
            await internal_error(scope["method"], scope["path"])(scope, receive, send)
