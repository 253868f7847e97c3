"""The FastAPI application: `create_app()` builds it. Models load once at start-up: `mt serve` loads
them before the server starts and hands them over, else the lifespan loads them."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from app.auth import Access, redact_access_log, split_list
from app.batcher import Batcher
from app.body_limit import BodySizeLimit
from app.errors import AnswerInternalErrors, describe_validation_errors, internal_error
from app.metrics import Metrics, ObserveRequests
from app.registry import ServedModel, load_models
from app.routes import health, languages, translate, web
from app.service import Service
from app.settings import Settings, load_settings
from app.torch_thread import TORCH_THREAD
from mt.translator import resolve_device

log = logging.getLogger("app")


def create_app(settings: Settings | None = None, models: dict[tuple[str, str], ServedModel] | None = None) -> FastAPI:
    """The app; it loads the models of `settings.models_dir` at start-up unless given them loaded."""
    settings = settings or load_settings()
    metrics = Metrics()
    access = Access.from_settings(settings)  # a bad keys file stops start-up here

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal models
        if models is None:
            load = functools.partial(
                load_models, settings.models_dir, settings.device, int8=settings.int8, bf16=settings.bf16
            )
            models = await asyncio.get_running_loop().run_in_executor(TORCH_THREAD, load)
        batchers = {
            pair: Batcher(
                model.translator,
                max_sentences=settings.max_batch_sentences,
                wait_seconds=settings.batch_wait_ms / 1000,
                max_queued_sentences=settings.max_queued_sentences,
                max_pieces=settings.max_pieces,
                timeout_seconds=settings.request_timeout_s,
                on_batch=metrics.batch_sentences.observe,
            )
            for pair, model in models.items()
        }
        for batcher in batchers.values():
            batcher.start()
        device = str(resolve_device(settings.device, int8=settings.int8))
        app.state.service = Service(settings, models, batchers, metrics, device)
        log.info("serving %s on %s", ", ".join(app.state.service.pairs()), device)
        log.info("access: %s", access.describe())
        redact_access_log()
        yield
        for batcher in batchers.values():  # requests in flight finish first
            await batcher.close()

    app = FastAPI(
        title="mt",
        summary="Recurrent neural machine translation, LibreTranslate-compatible",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.access = access
    routers = (translate.router, languages.router, health.router, web.router)
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _internal_error)  # for an error in the middleware itself

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)  # inside ObserveRequests: 413s are counted
    app.add_middleware(AnswerInternalErrors)  # its 500s pass through the middleware added after it
    paths = [getattr(route, "path", "") for router in routers for route in router.routes]
    app.add_middleware(ObserveRequests, metrics=metrics, paths=paths)

    # outermost but for Starlette's ServerErrorMiddleware: every answer carries the CORS headers, errors too
    if origins := split_list(settings.cors_origins):
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Authorization", "X-API-Key"],
            expose_headers=["Retry-After"],
        )
    return app


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)


async def _validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"error": describe_validation_errors(error.errors())}, status_code=400)


async def _client_gone(request: Request, error: Exception) -> Response:
    """The client went away while sending its body: no one to answer, and nothing wrong with the server.
    499 is nginx's "client closed request", which the metrics count it as."""
    return Response(status_code=499)


async def _internal_error(request: Request, error: Exception) -> Response:
    return internal_error(request.method, request.url.path)
