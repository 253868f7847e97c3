"""`GET /health` (liveness, device, models) and `GET /metrics` (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.schemas import Health, ModelInfo
from app.service import ServiceDep

router = APIRouter()


@router.get("/health", response_model=Health)
async def health(service: ServiceDep) -> Health:
    models = [
        ModelInfo(
            source=source,
            target=target,
            path=str(model.path),
            parameters=model.translator.num_parameters,
            beam_size=service.default_beam_size((source, target)),
        )
        for (source, target), model in sorted(service.models.items())
    ]
    return Health(device=service.device, models=models)


@router.get("/metrics", response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
