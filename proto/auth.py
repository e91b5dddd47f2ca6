"""Bearer tokens per project (RUNWIRE_TOKENS="project=token,other=token2"): the one parser and
the one check, shared by the gateway and the web UI. Dependency-free."""

from __future__ import annotations

import hmac
from typing import Mapping

__all__ = ["parse_tokens", "projects_for", "bearer_token"]


def parse_tokens(raw: str) -> dict[str, str]:
    """"project=token,other=token2" -> {"project": "token", ...}. ValueError (without the
    text, which holds secrets) on a malformed entry."""
    out = {}
    for pair in raw.split(","):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError("expected key=value pairs separated by commas")
        out[key.strip()] = value.strip()
    return out


def bearer_token(authorization: str | None) -> str:
    """The token of an "Authorization: Bearer TOKEN" value, or ""."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return ""


def projects_for(tokens: Mapping[str, str], token: str) -> set[str]:
    """The projects ``token`` is valid for (constant-time comparisons); empty for none."""
    if not token:
        return set()
    return {p for p, t in tokens.items() if hmac.compare_digest(t.encode(), token.encode())}
