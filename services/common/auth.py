"""Who is calling an HTTP API: API keys (or bearer tokens) mapped to a role and organisation.

Keys are stored as SHA-256 hashes in `config/principals.json`, so the file can be read
without exposing them. In production an OIDC gateway in front sets the same headers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field


class Role(StrEnum):
    PRACTICE = "practice"  # a GP or practice system, bound to one practice ODS code
    VETTING_CLINICIAN = "vetting_clinician"
    REPORTER = "reporter"
    PROVIDER = "provider"  # an imaging provider's system, bound to one provider ODS code
    BOOKING_CLERK = "booking_clerk"
    OPERATOR = "operator"


class Principal(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Who, for the audit trail (a user or system id, never a patient)")
    role: Role
    organisation: str | None = Field(default=None, description="Practice or provider ODS code")


class PrincipalEntry(Principal):
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Principals:
    def __init__(self, entries: list[PrincipalEntry]) -> None:
        self._by_hash = {
            e.key_sha256: Principal(name=e.name, role=e.role, organisation=e.organisation)
            for e in entries
        }

    @classmethod
    def load(cls, path: Path) -> Principals:
        if not path.exists():
            raise FileNotFoundError(
                f"principals file {path} is missing: copy config/principals.json or set *_CONFIG_DIR"
            )
        raw = json.loads(path.read_text("utf-8"))
        return cls([PrincipalEntry.model_validate(e) for e in raw["principals"]])

    def resolve(self, key: str) -> Principal | None:
        digest = hashlib.sha256(key.encode()).hexdigest()
        for known, principal in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None


_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key mapped to a role")
_bearer = HTTPBearer(auto_error=False, description="Bearer token mapped to a role")


async def current_principal(
    request: Request,
    api_key: Annotated[str | None, Depends(_api_key)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    principals: Principals = request.app.state.principals
    key = api_key or (bearer.credentials if bearer else None)
    principal = principals.resolve(key) if key else None
    if principal is None:
        raise HTTPException(
            status_code=401,
            detail="missing or unknown API key: send X-API-Key or Authorization: Bearer",
        )
    return principal


def require(*roles: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A FastAPI dependency that admits only these roles (403 otherwise)."""

    async def dependency(
        request: Request, principal: Annotated[Principal, Depends(current_principal)]
    ) -> Principal:
        if principal.role not in roles:
            metrics = getattr(request.app.state, "kit_metrics", None)
            if metrics is not None:
                metrics.authz_denied.labels(request.app.state.service, "http").inc()
            raise HTTPException(
                status_code=403,
                detail=f"role {principal.role} may not do this; needs {', '.join(roles)}",
            )
        return principal

    return dependency
