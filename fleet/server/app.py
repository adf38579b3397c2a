"""The app factory: settings, database, broker link, routers, pages, /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from edge_runtime.sync.topics import Topics
from fleet.server import api, pages
from fleet.server.actions import Actions, PahoLink
from fleet.server.auth import User
from fleet.server.deps import Server, current_user
from fleet.server.metrics import exposition
from fleet.server.rollout_runner import RolloutRunner
from fleet.server.settings import ServerSettings


def create_app(settings: ServerSettings, engine: Any, ingest: Any | None = None, key: Any | None = None,
               topics: Topics | None = None, background: list[Any] | None = None,
               retrain: dict[str, Any] | None = None) -> FastAPI:
    """The ASGI app. ``ingest`` and ``background`` (objects with start/stop) run for the app's lifetime;
    ``retrain`` (model name -> fleet.retrain.policy.RetrainPolicy) adds the re-training runner."""
    topics = topics or Topics()
    publish, link = None, None
    if ingest is not None:
        link = PahoLink(ingest.client)

        def publish(topic: str, payload: bytes, qos: int) -> None:
            info = ingest.client.publish(topic, payload, qos=qos)
            info.wait_for_publish(10)

    actions = Actions(engine, topics, key, publish, link, settings.public_url)
    srv = Server(settings=settings, engine=engine, actions=actions, ingest=ingest)
    jobs = [j for j in [ingest, *(background or [])] if j is not None]
    if ingest is not None:  # rollouts publish through the broker: they run where the server has one
        jobs.append(RolloutRunner(engine, srv.actions, settings.data_dir))
    if retrain is not None:
        from fleet.retrain.runner import RetrainRunner

        srv.retrain = RetrainRunner(engine, srv.actions, settings.data_dir, retrain, settings.operator_key)
        jobs.append(srv.retrain)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        for job in jobs:
            job.start()
        try:
            yield
        finally:
            for job in reversed(jobs):
                job.stop()

    app = FastAPI(title="edge-runtime fleet server", version="1", lifespan=lifespan)
    app.state.server = srv
    app.include_router(api.router)
    app.include_router(pages.router)

    @app.exception_handler(pages.LoginRequired)
    async def _to_login(_request: Request, _exc: pages.LoginRequired) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.get("/metrics", include_in_schema=False)
    def metrics(_u: User = Depends(current_user)) -> Response:
        return Response(exposition(srv), media_type="text/plain; version=0.0.4")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "broker": None if ingest is None else ingest.connected.is_set()}

    return app
