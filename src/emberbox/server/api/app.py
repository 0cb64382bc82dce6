"""Assembles the API: routes, JSON error handlers, and the middleware stack.

Request path, outermost first: API-key auth → per-key rate limit → body-size limit → FastAPI.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..auth.middleware import ApiKeyMiddleware, Authenticator
from ..builds.service import TemplateService
from ..builds.uploads import UPLOAD_PREFIX
from ..config import Settings
from ..lifecycle.network import NetworkService
from ..lifecycle.service import SandboxService
from ..lifecycle.snapshots import SnapshotService
from ..limits.ratelimit import RateLimitMiddleware, TokenBuckets
from ..secrets.service import SecretService
from ..volumes.service import VolumeService
from .body_limit import BodyLimitMiddleware
from .errors import install_error_handlers
from .models import Health
from .network import router as network_router
from .no_nul import NoNulMiddleware
from .routes import router
from .sandbox_logs import router as logs_router
from .secrets import router as secrets_router
from .snapshots import router as snapshots_router
from .templates import router as templates_router
from .templates import upload_app
from .unsupported import router as unsupported_router
from .volumes import CONTENT_PREFIX
from .volumes import router as volumes_router


def _document_real_errors(app: FastAPI) -> None:
    """FastAPI documents 422 for validation errors; we answer those with 400 ``Error``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for item in schema.get("paths", {}).values():
                for op in item.values():
                    op.get("responses", {}).pop("422", None)
            schemas = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_api_app(
    settings: Settings,
    service: SandboxService,
    authenticate: Authenticator,
    templates: TemplateService,
    volumes: VolumeService,
    secrets: SecretService,
) -> FastAPI:
    app = FastAPI(
        title="Emberbox API",
        version="0.1.0",
        description="E2B-compatible control plane: create, list and manage sandboxes.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.service = service
    app.state.snapshots = SnapshotService(service, settings.limits.max_snapshot_bytes)
    app.state.network = NetworkService(service)
    app.state.sandbox_domain = settings.sandbox_domain
    install_error_handlers(app)
    app.include_router(unsupported_router)  # first: /sandboxes/metrics is not a sandbox id
    app.include_router(router)
    app.include_router(logs_router)
    app.state.templates = templates
    app.include_router(templates_router)  # before snapshots: DELETE /templates/{id} is ours
    app.include_router(snapshots_router)
    app.include_router(network_router)
    app.state.volumes = volumes
    app.state.volume_token_failures = TokenBuckets(
        settings.limits.bad_key_rate_per_s, settings.limits.bad_key_burst
    )
    app.include_router(volumes_router)
    app.state.secrets = secrets
    app.include_router(secrets_router)
    app.mount(UPLOAD_PREFIX.rstrip("/"), upload_app(templates))

    @app.get("/health", response_model=Health, tags=["health"], summary="API liveness")
    async def health() -> Health:
        return Health()

    _document_real_errors(app)

    # add_middleware wraps: the last added runs first.
    app.add_middleware(NoNulMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes,
                       exempt_prefixes=(UPLOAD_PREFIX,), exempt_puts=(CONTENT_PREFIX,))  # fmt: skip
    app.add_middleware(
        RateLimitMiddleware,
        buckets=TokenBuckets(settings.limits.rate_per_s, settings.limits.rate_burst),
    )
    failures = TokenBuckets(settings.limits.bad_key_rate_per_s, settings.limits.bad_key_burst)
    # Uploads check their signed URLs, volume contents their volume's bearer token.
    app.add_middleware(ApiKeyMiddleware, authenticate=authenticate, failures=failures,
                       public_prefixes=(UPLOAD_PREFIX, CONTENT_PREFIX))  # fmt: skip
    return app
