"""A small asyncio client for the few Kubernetes calls the agent makes.

The agent needs list+watch of three resources and a status patch — no models, no handler
framework. The official ``kubernetes`` package is synchronous (threads that cannot be
cancelled mid-read), and kopf would bring peering, finalizers and a registry the agent does
not use; so requests go over aiohttp (already a kopf dependency), and ``kubernetes.config``
only loads credentials (kubeconfig or in-cluster service account, with its token refresh).
Objects stay plain dicts, as the API server sends them.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A non-2xx answer; ``status`` is the HTTP code (410: resourceVersion too old)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status


def load_configuration(kubeconfig: str | None) -> k8s_client.Configuration:
    """Credentials from ``kubeconfig``, else the in-cluster service account, else ~/.kube."""
    cfg = k8s_client.Configuration()
    if kubeconfig:
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(client_configuration=cfg)
    return cfg


class Api:
    """Authenticated JSON requests against one API server."""

    def __init__(self, cfg: k8s_client.Configuration) -> None:
        self.cfg = cfg
        self.base = cfg.host.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.base.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=self.cfg.ssl_ca_cert or None)
        if not self.cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cfg.cert_file:
            ctx.load_cert_chain(self.cfg.cert_file, self.cfg.key_file)
        return ctx

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl())
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        # kubernetes.config stores "Bearer <token>" here and refreshes it (exec plugins,
        # projected service-account tokens) through the hook this call runs
        token = self.cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["Authorization"] = token
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: Any = None, content_type: str = "application/json",
                      timeout: float = 30.0) -> Any:
        data = None if body is None else json.dumps(body)
        async with self.session.request(
            method, self.base + path, params=params, data=data,
            headers=self._headers(content_type if data else None),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise ApiError(resp.status, _reason(text))
            return json.loads(text) if text else None

    async def get(self, path: str, **params: str) -> Any:
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: Mapping[str, Any]) -> Any:
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> Any:
        return await self.request("PATCH", path, body=body,
                                  content_type="application/merge-patch+json")

    async def watch(self, path: str, resource_version: str, *, label_selector: str | None = None,
                    timeout_seconds: int = 300) -> AsyncIterator[dict[str, Any]]:
        """Watch events from ``resource_version`` until the server ends the stream."""
        params = {"watch": "1", "resourceVersion": resource_version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        if label_selector:
            params["labelSelector"] = label_selector
        # no total timeout; a silent connection is cut by the server's timeoutSeconds, and a
        # dead one by the read timeout (bookmarks arrive about once a minute)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds + 30)
        async with self.session.get(self.base + path, params=params, headers=self._headers(),
                                    timeout=timeout) as resp:
            if resp.status >= 300:
                raise ApiError(resp.status, _reason(await resp.text()))
            # split lines ourselves: StreamReader's readline caps line length, and a Node with
            # its image list can exceed it
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _reason(text: str) -> str:
    try:
        return str(json.loads(text).get("message", ""))[:200]
    except (ValueError, AttributeError):
        return text[:200]
