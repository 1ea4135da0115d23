"""The directory's HTTP API, as the payment client needs it: read an ad, search.

Errors come back as `DirectoryApiError`, built from the API's error envelope
({code, status, error, message, errors}) with the field paths kept."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from directory_client import __version__

DEFAULT_TIMEOUT_S = 10.0
USER_AGENT = f"commons-directory-client/{__version__}"


class DirectoryApiError(Exception):
    """The directory refused or failed a request."""

    def __init__(self, status: int, code: str, message: str, errors: Mapping | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = dict(errors or {})  # by location, then field: {"query": {"lat": [...]}}


class DirectoryUnavailable(Exception):
    """The directory could not be reached (refused, timed out, dropped)."""


class DirectoryClient:
    def __init__(
        self,
        base_url: str,
        *,
        key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout_s,
            transport=transport,
        )

    def __enter__(self) -> DirectoryClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get_ad(self, ad_id: str) -> dict[str, Any]:
        """A public ad as GET /v1/ads/{id} shows it, its payment block included."""
        return self._get(f"/v1/ads/{ad_id}")

    def search(self, **params: Any) -> dict[str, Any]:
        """One page of GET /v1/search: lists become comma lists, booleans true/false."""
        return self._get("/v1/search", params=_query(params))

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        try:
            response = self._http.get(path, params=params)
        except httpx.TransportError as error:
            raise DirectoryUnavailable(
                f"cannot reach the directory at {self._http.base_url}: {error}"
            ) from error
        if response.is_success:
            return response.json()
        raise _error(response)


def _query(params: Mapping[str, Any]) -> dict[str, str]:
    query = {}
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list | tuple | set | frozenset):
            value = ",".join(str(item) for item in value)
        query[name] = str(value)
    return query


def _error(response: httpx.Response) -> DirectoryApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, Mapping):  # not the directory's envelope (a proxy's page)
        return DirectoryApiError(response.status_code, "http_error", response.reason_phrase)
    return DirectoryApiError(
        response.status_code,
        str(body.get("error") or body.get("status") or "http_error"),
        str(body.get("message") or response.reason_phrase),
        body.get("errors"),
    )
