"""The FastAPI application: `create_app(settings)`; `ref2img serve` runs it on uvicorn."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ref2img.server import openai_routes, studio, task_feed
from ref2img.server.docs_page import install_docs
from ref2img.server.errors import install_error_handlers
from ref2img.server.headers import SecurityHeaders
from ref2img.server.limits import BodyLimit
from ref2img.server.openapi import install_openapi
from ref2img.server.routes import router
from ref2img.server.services import Services
from ref2img.settings import ServerSettings


def create_app(settings: ServerSettings) -> FastAPI:
    services = Services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services.start()
        if settings.studio_link:
            services.announce_studio()
        try:
            yield
        finally:
            services.stop()

    app = FastAPI(
        title="ref2img",
        version="0.1.0",
        lifespan=lifespan,
        description="Tomoviee-compatible reference-to-image server (tm_reference_img2img).",
        docs_url=None,  # served by docs_page, from the package: FastAPI's default loads it from a CDN
        redoc_url=None,
    )
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeaders)
    install_openapi(app)
    install_docs(app)
    app.include_router(router)
    app.include_router(task_feed.router)
    app.include_router(studio.router)
    app.include_router(openai_routes.router)
    app.mount("/studio/static", StaticFiles(directory=str(studio.STATIC)), name="studio-static")
    return app
