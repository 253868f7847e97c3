"""What the routes share: settings, loaded models, their batchers and the metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.batcher import Batcher
from app.metrics import Metrics
from app.registry import ServedModel
from app.settings import Settings


@dataclass
class Service:
    settings: Settings
    models: dict[tuple[str, str], ServedModel]
    batchers: dict[tuple[str, str], Batcher]
    metrics: Metrics
    device: str

    def pairs(self) -> list[str]:
        return [f"{source}->{target}" for source, target in sorted(self.models)]

    def default_beam_size(self, pair: tuple[str, str]) -> int:
        """The beam of a request that names none: MT_DEFAULT_BEAM_SIZE, else the model's own, at most
        MT_MAX_BEAM_SIZE, which bounds every search, not only the beams requests ask for."""
        own = self.settings.default_beam_size or self.models[pair].translator.decode.beam_size
        return min(own, self.settings.max_beam_size)


async def get_service(request: Request) -> Service:  # async: FastAPI runs a plain function on a worker thread
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
