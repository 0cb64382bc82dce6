"""envd's plain-HTTP error shape: ``{"code": <status>, "message": "..."}``."""

from __future__ import annotations

from starlette.responses import JSONResponse

from ..signed_urls import UNAUTHORIZED

UNAUTHORIZED_MESSAGE = UNAUTHORIZED  # every route's, the signed file routes' included


class HTTPProblem(Exception):
    """Raised anywhere below a plain-HTTP route; rendered once by :func:`problem_response`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def problem_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)
