"""`POST /translate`, LibreTranslate-compatible: JSON or form data in, `{"translatedText": ...}` out."""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

import torch
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from app.auth import require_access
from app.batcher import ClientGone, Overloaded, TextTooLong
from app.errors import describe_validation_errors
from app.forms import FORM_TYPES, FormError, form_fields, media_type
from app.schemas import Alignment, ErrorResponse, TranslateRequest, TranslateResponse
from app.segment import alignment_size, join, split
from app.service import ServiceDep
from mt.search import SearchTimeout
from mt.translator import Translation

router = APIRouter()
_RETRY = {"Retry-After": "1"}  # seconds; a client that backs off finds the queue drained

_BODY = {"schema": TranslateRequest.model_json_schema()}  # the body is parsed by hand: JSON or form data


@router.post(
    "/translate",
    response_model=TranslateResponse,
    response_model_exclude_none=True,
    dependencies=[Depends(require_access)],  # the API key and the rate limit, when configured
    responses={code: {"model": ErrorResponse} for code in (400, 403, 413, 429, 500, 503)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": _BODY,
                "application/x-www-form-urlencoded": _BODY,
                "multipart/form-data": _BODY,
            },
        }
    },
)
async def translate(request: Request, service: ServiceDep) -> TranslateResponse:
    """Translate `q` (a string or a list of strings) from `source` to `target`."""
    body = await _parse(request)
    settings = service.settings
    texts = [body.q] if isinstance(body.q, str) else body.q
    # a request of more texts than may wait in the queue would be told to retry forever
    max_texts = min(settings.max_texts, settings.max_queued_sentences)
    _check_limits(texts, body, max_texts, settings.max_chars, settings.max_beam_size, settings.max_alternatives)
    pair = (body.source, body.target)
    if pair not in service.models:
        raise HTTPException(
            400, f"language pair {body.source}->{body.target} is not available; available: {', '.join(service.pairs())}"
        )
    translator = service.models[pair].translator
    n_best = body.alternatives + 1
    beam_size = max(body.beam_size or service.default_beam_size(pair), n_best)
    decode = dataclasses.replace(translator.decode, beam_size=beam_size, n_best=n_best)

    segmented = [split(text) for text in texts]
    sentences = [sentence for segments in segmented for sentence in segments.sentences]
    owner = [index for index, segments in enumerate(segmented) for _ in segments.sentences]  # text of each
    if len(sentences) > settings.max_queued_sentences:  # more than may wait: told to retry forever
        raise HTTPException(
            400, f"q holds {len(sentences)} sentences; at most {settings.max_queued_sentences} per request"
        )
    try:
        translated = await service.batchers[pair].translate(sentences, decode, client_gone=request.is_disconnected)
    except ClientGone:
        raise ClientDisconnect from None  # answered 499, to no one
    except Overloaded as error:
        raise HTTPException(503, f"the server is busy ({error}); retry later", headers=_RETRY) from None
    except TextTooLong as error:
        where = "q" if isinstance(body.q, str) else f"q[{owner[error.index]}]"
        raise HTTPException(
            400,
            f"{where} has a sentence of {error.pieces} subword pieces; at most {error.limit} per sentence "
            "(a sentence ends at . ! ? \u2026 or a line break)",
        ) from None
    except SearchTimeout:
        raise HTTPException(
            503,
            f"translation did not finish within the time budget of {settings.request_timeout_s:g} s; "
            "the server is busy, or the texts are too long: retry later, or send fewer or shorter texts",
            headers=_RETRY,
        ) from None
    parts = iter(translated)
    per_text = [list(itertools.islice(parts, len(segments.sentences))) for segments in segmented]
    weights = sum(alignment_size(sentences) for sentences in per_text if sentences) if body.alignments else 0
    if weights > settings.max_alignment_weights:  # its JSON would hold the event loop, and memory, for seconds
        raise HTTPException(
            400,
            f"the alignments of these texts hold {weights:,} attention weights; at most "
            f"{settings.max_alignment_weights:,} per request: send fewer or shorter texts with alignments",
        )
    results = [
        join(segments, sentences, alignment=body.alignments)
        for segments, sentences in zip(segmented, per_text, strict=True)
    ]
    service.metrics.sentences.labels(f"{body.source}->{body.target}").inc(len(sentences))
    return _response(
        results, single=isinstance(body.q, str), alternatives=body.alternatives > 0, alignments=body.alignments
    )


async def _parse(request: Request) -> TranslateRequest:
    """JSON or form data (the body size is bounded by the BodySizeLimit middleware)."""
    raw: Any
    if media_type(request) in FORM_TYPES:
        try:
            fields = await form_fields(request)
        except FormError as error:
            raise HTTPException(400, str(error)) from None
        raw = {name: values if len(values) > 1 else values[0] for name, values in fields.items()}
    else:
        data = await request.body()
        if not data:
            raise HTTPException(400, "request body is empty: send JSON or form data with q, source and target")
        try:
            raw = json.loads(data)
            json.dumps(raw, ensure_ascii=False).encode()  # lone surrogates ("\ud800") parse, yet are not text
        except UnicodeEncodeError:
            raise HTTPException(
                400, "request body holds a lone UTF-16 surrogate (\\ud800 to \\udfff), which is not text"
            ) from None
        except (ValueError, RecursionError) as error:  # also huge numbers and deep nesting
            raise HTTPException(400, f"request body is not valid JSON: {str(error)[:200]}") from None
    if not isinstance(raw, dict):
        raise HTTPException(400, "request body must be a JSON object with q, source and target")
    # LibreTranslate clients send empty form fields and nulls for "use the default"
    raw = {key: value for key, value in raw.items() if key == "q" or value not in ("", None)}
    try:
        return TranslateRequest.model_validate(raw)
    except ValidationError as error:
        raise HTTPException(400, describe_validation_errors(error.errors())) from None


def _check_limits(
    texts: list[str], body: TranslateRequest, max_texts: int, max_chars: int, max_beam: int, max_alternatives: int
) -> None:
    if len(texts) > max_texts:
        raise HTTPException(400, f"q holds {len(texts)} texts; at most {max_texts} per request")
    for index, text in enumerate(texts):
        if len(text) > max_chars:
            where = "q" if isinstance(body.q, str) else f"q[{index}]"
            raise HTTPException(400, f"{where} has {len(text)} characters; at most {max_chars} per text")
    if body.beam_size is not None and body.beam_size > max_beam:
        raise HTTPException(400, f"beam_size {body.beam_size} is over the limit of {max_beam}")
    if body.alternatives > max_alternatives:
        raise HTTPException(400, f"alternatives {body.alternatives} is over the limit of {max_alternatives}")


def _response(
    results: list[Translation | None], *, single: bool, alternatives: bool, alignments: bool
) -> TranslateResponse:
    texts = [r.text if r else "" for r in results]
    others = [[c.text for c in r.candidates[1:]] if r else [] for r in results]
    aligned = (
        [
            Alignment(
                source_pieces=r.source_pieces,
                target_pieces=r.candidates[0].pieces,
                # 4 decimals, in float64, whose shortest repr is then as short: a float32 0.1234
                # would be written 0.12340000271797180
                attention=torch.round(r.candidates[0].attention.double(), decimals=4).tolist(),
            )
            if r
            else Alignment(source_pieces=[], target_pieces=[], attention=[])
            for r in results
        ]
        if alignments
        else None
    )
    if single:
        return TranslateResponse(
            translatedText=texts[0],
            alternatives=others[0] if alternatives else None,
            alignments=aligned[0] if aligned else None,
        )
    return TranslateResponse(translatedText=texts, alternatives=others if alternatives else None, alignments=aligned)
