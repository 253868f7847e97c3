"""Service settings, from `MT_*` environment variables (or `mt serve` flags, which set them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MT_")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)  # uvicorn would bind port % 65536
    # --- access control, for a server exposed beyond localhost (app/auth.py; README "Exposing the server").
    # Lists are comma-separated, so MT_* variables read "a,b" rather than JSON. The keys have no `mt serve`
    # flag, as flags show in `ps`; SecretStr keeps them out of reprs and logs.
    api_keys: SecretStr = SecretStr("")  # keys that may call /translate; any key makes one required
    api_keys_file: str = ""  # a file of keys, one per line, '#' comments; added to api_keys
    rate_limit_per_minute: int = Field(default=0, ge=0)  # /translate requests per key (else per client address); 0: off
    cors_origins: str = ""  # origins whose web pages may call the API, or "*"; empty: no CORS headers
    # --- end of access control
    models_dir: str = "models"  # every model directory under it is served
    device: str = "auto"  # CUDA when present, else CPU
    int8: bool = False  # quantize the models to int8: faster on the CPU, at a measured BLEU cost
    bf16: bool = False  # multiply in bfloat16: on GPUs, and on CPUs with AMX or AVX512-BF16
    max_chars: int = Field(default=5000, ge=1)  # per text
    max_texts: int = Field(default=100, ge=1)  # per request
    max_beam_size: int = Field(default=10, ge=1, le=100)  # caps requests and the models' own default beams
    max_alternatives: int = Field(default=5, ge=0)  # a request's alternatives + 1 hypotheses are searched
    # attention weights per request with alignments: a million at 4 decimals are about 7 MB of JSON, and one
    # text of the longest admitted (400 pieces) can hold 245,000
    max_alignment_weights: int = Field(default=1_000_000, ge=0)
    max_body_bytes: int = Field(default=1_000_000, ge=1)
    # at most, for as many sentences as were in flight after the last batch
    batch_wait_ms: float = Field(default=10.0, ge=0)
    # sentences per search, at most (a batch of requests is searched this many at a time): with beam 5,
    # searches of 64 instead of 32 served no faster and grew the server to 1.0-1.25 GiB (docs/performance.md)
    max_batch_sentences: int = Field(default=32, ge=1)
    # load and pathological input: refuse early rather than queue or decode without bound
    # per text, after SentencePiece; longer texts are refused (training kept <= 100 words)
    max_pieces: int = Field(default=400, ge=1)
    # per model; beyond it requests are answered 503 with Retry-After
    max_queued_sentences: int = Field(default=2000, ge=1)
    # time budget per request, waiting and decoding; past it, 503
    request_timeout_s: float = Field(default=30.0, gt=0)
    default_beam_size: int = Field(default=0, ge=0)  # 0: each model's own default
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"  # uvicorn's levels

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _search_within_the_beam_cap(self) -> Settings:
        """A request's alternatives + 1 hypotheses, and the default beam, must fit under MT_MAX_BEAM_SIZE."""
        if self.max_alternatives + 1 > self.max_beam_size:
            raise ValueError(
                f"MT_MAX_ALTERNATIVES + 1 ({self.max_alternatives + 1}) is over MT_MAX_BEAM_SIZE "
                f"({self.max_beam_size}): every alternative is a hypothesis of the beam"
            )
        if self.default_beam_size > self.max_beam_size:
            raise ValueError(
                f"MT_DEFAULT_BEAM_SIZE ({self.default_beam_size}) is over MT_MAX_BEAM_SIZE ({self.max_beam_size})"
            )
        return self

    @model_validator(mode="after")
    def _no_keys_in_trace_logs(self) -> Settings:
        """uvicorn's trace level logs every request's headers and URL, where the API keys travel."""
        if self.log_level == "trace" and (self.api_keys.get_secret_value() or self.api_keys_file):
            raise ValueError("MT_LOG_LEVEL trace logs the API keys of every request: use debug or above with keys")
        return self


class SettingsError(ValueError):
    """Settings no server can run with: one message naming each `MT_*` variable that is wrong, and why."""


def load_settings(**values: Any) -> Settings:
    """`Settings` from the environment and `values` (the `mt serve` flags), or SettingsError in one line."""
    try:
        return Settings(**values)
    except ValidationError as error:
        problems = []
        for problem in error.errors(include_url=False):
            message = problem["msg"].removeprefix("Value error, ")
            if problem["loc"]:  # a field's own bound; else a rule across fields, whose message names them
                name = "MT_" + "_".join(str(part) for part in problem["loc"]).upper()
                message = f"{name}: {message} (got {problem['input']!r})"
            problems.append(message)
        raise SettingsError("; ".join(problems)) from None
