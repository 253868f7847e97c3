"""`GET /`: a small page to translate and see the attention of the result as a heatmap."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

PAGE = (Path(__file__).parents[1] / "static" / "index.html").read_text(encoding="utf-8")


@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)  # HEAD: monitors
async def page() -> str:
    return PAGE
