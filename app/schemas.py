"""Request and response models of the HTTP API. `POST /translate` follows the LibreTranslate API
(`q`, `source`, `target`, `format`, `alternatives`, `api_key` -> `translatedText`, `alternatives`),
so its clients and plugins work unchanged; `beam_size` and `alignments` are our own extras."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # LibreTranslate clients send fields we do not use

    q: str | list[str] = Field(description="text to translate, or a list of texts")
    source: str = Field(max_length=32, description="source language code, e.g. 'de'")
    target: str = Field(max_length=32, description="target language code, e.g. 'en'")
    format: Literal["text"] = Field("text", description="only plain text is supported")
    alternatives: int = Field(0, ge=0, description="how many alternative translations to return per text")
    api_key: str | None = Field(
        None, description="the API key, when the server requires one (or an X-API-Key or Authorization: Bearer header)"
    )
    beam_size: int | None = Field(None, ge=1, description="beam width (1 = greedy); default: the model's")
    alignments: bool = Field(False, description="also return source pieces, target pieces and attention")


class Alignment(BaseModel):
    source_pieces: list[str]
    target_pieces: list[str]
    attention: list[list[float]] = Field(description="one row per target piece, one column per source piece")


class TranslateResponse(BaseModel):
    translatedText: str | list[str]  # LibreTranslate's field name
    alternatives: list[str] | list[list[str]] | None = None
    alignments: Alignment | list[Alignment] | None = None


class Language(BaseModel):
    code: str
    name: str
    targets: list[str]


class ModelInfo(BaseModel):
    source: str
    target: str
    path: str
    parameters: int
    beam_size: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    device: str
    models: list[ModelInfo]


class ErrorResponse(BaseModel):
    error: str
