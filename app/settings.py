"""Service settings, from `MT_*` environment variables (or `mt serve` flags, which set them)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MT_")

    host: str = "127.0.0.1"
    port: int = 8000
    models_dir: str = "models"  # every model directory under it is served
    device: str = "auto"  # CUDA when present, else CPU
    max_chars: int = 5000  # per text
    max_texts: int = 100  # per request
    max_beam_size: int = 10
    max_alternatives: int = 5
    max_body_bytes: int = 1_000_000
    batch_wait_ms: float = 5.0  # how long a batch waits for more sentences from concurrent requests
    max_batch_sentences: int = 64  # sentences decoded together
    default_beam_size: int = 0  # 0: each model's own default
    log_level: str = "info"
