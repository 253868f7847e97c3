"""`GET /languages`: the languages the loaded models translate from, with their targets."""

from __future__ import annotations

from fastapi import APIRouter

from app.registry import language_name
from app.schemas import Language
from app.service import ServiceDep

router = APIRouter()


@router.get("/languages", response_model=list[Language])
async def languages(service: ServiceDep) -> list[Language]:
    targets: dict[str, list[str]] = {}
    for source, target in sorted(service.models):
        targets.setdefault(source, []).append(target)
    for _, target in sorted(service.models):  # clients build their target pickers from this list too
        targets.setdefault(target, [])
    return [Language(code=code, name=language_name(code), targets=t) for code, t in targets.items()]
