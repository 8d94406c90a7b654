"""The bare web+database baseline of bench.pipeline: one FastAPI endpoint doing one asyncpg
INSERT, served by uvicorn exactly as `refnet intake` serves intake (services/cli.py: one
process, uvicorn.run with log_config=None, proxy_headers, the same JSON logging at the same
LOG_LEVEL, so uvicorn's access log line per request too, the same collector settings) with
intake's pool (shared.db.create_pool, max_size 10).

`POST /hits` takes a JSON object (the same intake body the benchmark sends intake), inserts
its submission_id into bench_webdb.hits and answers 201 with the row's id. No validation,
no authentication, no middleware: what the web framework, the server and one database round
trip cost on their own.

Run by bench.pipeline as `python -m bench.webdb` with DATABASE_URL and HTTP_PORT set; the
table is created by the benchmark before the server starts.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse

from shared.db import create_pool

SCHEMA = "bench_webdb"
CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS hits (id bigserial PRIMARY KEY, submission_id uuid NOT NULL, "
    "received_at timestamptz NOT NULL DEFAULT now())"
)


def create_app(database_url: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await create_pool(database_url, SCHEMA)
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/hits", status_code=201)
    async def hit(request: Request, body: dict[str, Any] = Body(...)) -> JSONResponse:  # noqa: B008
        row_id = await request.app.state.pool.fetchval(
            "INSERT INTO hits (submission_id) VALUES ($1) RETURNING id",
            UUID(str(body["submission_id"])),
        )
        return JSONResponse({"id": row_id}, status_code=201)

    return app


def main() -> None:
    import uvicorn

    from services.cli import settle_heap
    from shared.logs import configure_logging

    configure_logging("bench-webdb", os.environ.get("LOG_LEVEL", "INFO"))
    app = create_app(os.environ["DATABASE_URL"])
    settle_heap()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["HTTP_PORT"]),
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
    )


if __name__ == "__main__":
    main()
