"""The JSON REST API (``/api/...``), ``/metrics`` and ``/healthz``. Documented by
:data:`celeriac.plugins.dashboard._openapi.OPENAPI` (served at ``/api/openapi.json``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import celeriac
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ._history import SORT_KEYS, Query
from ._monitor import Monitor
from ._openapi import OPENAPI
from ._security import CSRF_COOKIE
from ._settings import DashboardConfig

__all__ = ["ApiError", "api_routes", "mask_secrets"]

_SECRET_KEY = re.compile(r"pass|secret|token|key|credential|auth|signature", re.IGNORECASE)
_STATES = ("PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED")
#: Notes a page's event stream buffers; when it is full, notes are dropped and the page is sent a
#: ``resync`` event (reload everything) instead.
STREAM_QUEUE_SIZE = 2000
_INSPECT = ("stats", "active_queues", "registered", "conf", "active", "reserved", "scheduled", "revoked")


class ApiError(Exception):
    """A request the API refuses: ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def mask_secrets(value: Any, key: str = "") -> Any:
    """A copy of ``value`` with secret-looking keys' values replaced by ``****`` and passwords
    inside URLs masked (a worker's config is shown through this)."""
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secrets(item, key) for item in value]
    if _SECRET_KEY.search(key) and value not in (None, "", [], {}) and not isinstance(value, bool | int | float):
        return celeriac.mask_url(value) if isinstance(value, str) and "://" in value else "****"
    if isinstance(value, str) and "://" in value:
        return celeriac.mask_url(value)
    return value


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(json.loads(json.dumps(data, default=repr)), status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def _int(data: dict[str, Any], key: str, default: int | None = None, minimum: int = 0) -> int:
    value = data.get(key, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ApiError(400, f"{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _float_or_none(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{key}: expected a number, got {value!r}") from None
    if number < 0:
        raise ApiError(400, f"{key}: expected a number >= 0, got {value!r}")
    return number


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{key}: expected a non-empty string")
    return value.strip()


class Api:
    """The endpoints, bound to one monitor and config."""

    def __init__(self, monitor: Monitor, config: DashboardConfig, inspect_timeout: float = 1.0) -> None:
        self.monitor = monitor
        self.app = monitor.app
        self.config = config
        self.inspect_timeout = inspect_timeout
        self._executor = ThreadPoolExecutor(max_workers=len(_INSPECT), thread_name_prefix="celeriac-dashboard-inspect")
        self._consumers: tuple[float, dict[str, list[str]]] = (0.0, {})

    # -- workers ----------------------------------------------------------------------------

    async def workers(self, request: Request) -> Response:
        return _json({"workers": self.monitor.workers()})

    async def worker(self, request: Request) -> Response:
        hostname = request.path_params["hostname"]
        known = {worker["hostname"]: worker for worker in self.monitor.workers()}
        details = await run_in_threadpool(self._inspect_worker, hostname)
        if hostname not in known and not any(details.values()):
            raise ApiError(404, f"no worker called {hostname!r} is known or answers")
        return _json({"worker": known.get(hostname), "inspect": details})

    def _inspect_worker(self, hostname: str) -> dict[str, Any]:
        inspect = self.app.control.inspect(destination=[hostname], timeout=self.inspect_timeout)
        futures = {name: self._executor.submit(getattr(inspect, name)) for name in _INSPECT}
        details: dict[str, Any] = {}
        for name, future in futures.items():
            try:
                replies = future.result() or {}
            except Exception as exc:
                replies = {hostname: {"error": str(exc)}}
            details[name] = replies.get(hostname)
        details["conf"] = mask_secrets(details.get("conf"))
        return details

    async def worker_action(self, request: Request) -> Response:
        hostname = request.path_params["hostname"]
        action = request.path_params["action"]
        data = await _body(request)
        call = self._action(action, data)
        replies = await run_in_threadpool(call, hostname)
        reply = next((item[hostname] for item in replies or [] if hostname in item), None)
        if reply is None:
            raise ApiError(504, f"worker {hostname!r} did not answer {action} within {self.inspect_timeout}s")
        status = 400 if isinstance(reply, dict) and "error" in reply else 200
        return _json({"worker": hostname, "action": action, "reply": reply}, status)

    def _action(self, action: str, data: dict[str, Any]) -> Callable[[str], Any]:
        control = self.app.control
        options: dict[str, Any] = {"reply": True, "timeout": self.inspect_timeout}

        def target(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[str], Any]:
            return lambda hostname: method(*args, destination=[hostname], **kwargs, **options)

        if action == "pool-grow":
            return target(control.pool_grow, _int(data, "n", 1, minimum=1))
        if action == "pool-shrink":
            return target(control.pool_shrink, _int(data, "n", 1, minimum=1))
        if action == "autoscale":
            maximum, minimum = _int(data, "max", minimum=1), _int(data, "min", 0)
            if minimum > maximum:
                raise ApiError(400, f"autoscale: min ({minimum}) is larger than max ({maximum})")
            return target(control.autoscale, maximum, minimum)
        if action == "add-consumer":
            return target(control.add_consumer, _str(data, "queue"))
        if action == "cancel-consumer":
            return target(control.cancel_consumer, _str(data, "queue"))
        if action == "rate-limit":
            rate = data.get("rate")
            if rate is not None and not isinstance(rate, str | int | float):
                raise ApiError(400, f"rate: expected a rate such as '10/m' or null, got {rate!r}")
            return target(control.rate_limit, _str(data, "task_name"), rate)
        if action == "time-limit":
            soft, hard = _float_or_none(data, "soft"), _float_or_none(data, "hard")
            return target(control.time_limit, _str(data, "task_name"), soft=soft, hard=hard)
        if action == "shutdown":
            return target(control.shutdown)
        raise ApiError(
            404,
            f"unknown worker action {action!r}; one of pool-grow, pool-shrink, autoscale, add-consumer, "
            "cancel-consumer, rate-limit, time-limit, shutdown",
        )

    # -- tasks ------------------------------------------------------------------------------

    async def tasks(self, request: Request) -> Response:
        params = request.query_params
        sort = params.get("sort", "timestamp")
        if sort not in SORT_KEYS:
            raise ApiError(400, f"sort: one of {', '.join(SORT_KEYS)}, not {sort!r}")
        order = params.get("order", "desc")
        if order not in {"asc", "desc"}:
            raise ApiError(400, f"order: asc or desc, not {order!r}")
        state = params.get("state") or None
        if state is not None and state not in _STATES:
            raise ApiError(400, f"state: one of {', '.join(_STATES)}, not {state!r}")
        query = Query(
            state=state,
            name=params.get("name") or None,
            worker=params.get("worker") or None,
            since=_float_or_none(dict(params), "since"),
            until=_float_or_none(dict(params), "until"),
            search=params.get("search") or None,
            sort=sort,
            descending=order == "desc",
            offset=_int(dict(params), "offset", 0),
            limit=min(_int(dict(params), "limit", 50, minimum=1), 500),
        )
        total, rows = await run_in_threadpool(self.monitor.history.query, query)
        return _json({"total": total, "offset": query.offset, "limit": query.limit, "tasks": rows})

    async def task_names(self, request: Request) -> Response:
        return _json({"names": await run_in_threadpool(self.monitor.history.names)})

    async def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        record = await run_in_threadpool(self.monitor.history.get, task_id)
        if record is None:
            raise ApiError(404, f"no task {task_id!r} in the history")
        return _json(record)

    async def task_result(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]

        def read() -> dict[str, Any]:
            result = self.app.AsyncResult(task_id)
            state = result.state
            value = result.info
            if isinstance(value, BaseException):
                value = f"{type(value).__name__}: {value}"
            return {"task_id": task_id, "state": state, "result": value, "traceback": result.traceback}

        return _json(await run_in_threadpool(read))

    async def revoke(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        data = await _body(request)
        terminate = data.get("terminate", False)
        if not isinstance(terminate, bool):
            raise ApiError(400, f"terminate: expected true or false, got {terminate!r}")
        signal = data.get("signal", "SIGTERM")
        if not isinstance(signal, str) or not re.fullmatch(r"SIG[A-Z0-9]+", signal):
            raise ApiError(400, f"signal: expected a signal name such as SIGTERM, got {signal!r}")
        name = data.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ApiError(400, f"name: expected the task's name or null, got {name!r}")
        if name:
            self.monitor.remember_name(task_id, name.strip())

        def call() -> Any:
            return self.app.control.revoke(
                task_id, terminate=terminate, signal=signal, reply=True, timeout=self.inspect_timeout
            )

        replies = await run_in_threadpool(call)
        return _json({"task_id": task_id, "terminate": terminate, "replies": replies or []})

    async def send(self, request: Request) -> Response:
        data = await _body(request)
        name = _str(data, "name")
        args = data.get("args", [])
        kwargs = data.get("kwargs", {})
        if not isinstance(args, list):
            raise ApiError(400, "args: expected a JSON array")
        if not isinstance(kwargs, dict):
            raise ApiError(400, "kwargs: expected a JSON object")
        queue = data.get("queue") or None
        if queue is not None and not isinstance(queue, str):
            raise ApiError(400, "queue: expected a string")
        countdown = _float_or_none(data, "countdown")

        def call() -> str:
            return self.app.send_task(name, args, kwargs, queue=queue, countdown=countdown).id

        task_id = await run_in_threadpool(call)
        self.monitor.remember_name(task_id, name)
        if queue:
            self.monitor.watch_queue(queue)
        return _json({"task_id": task_id, "name": name}, 202)

    # -- queues, graphs, metrics ------------------------------------------------------------

    async def queues(self, request: Request) -> Response:
        consumers = await run_in_threadpool(self._queue_consumers)
        for queue in {name for names in consumers.values() for name in names}:
            self.monitor.watch_queue(queue)
        lengths = await run_in_threadpool(self.monitor.sample_queues)
        rows = [
            {
                "name": queue,
                "length": lengths.get(queue),
                "consumers": sorted(host for host, names in consumers.items() if queue in names),
            }
            for queue in self.monitor.queues()
        ]
        return _json({"queues": rows})

    def _queue_consumers(self) -> dict[str, list[str]]:
        fetched_at, cached = self._consumers
        if time.monotonic() - fetched_at < 5:
            return cached
        replies = self.app.control.inspect(timeout=self.inspect_timeout).active_queues() or {}
        consumers = {
            host: [str(queue.get("name")) if isinstance(queue, dict) else str(queue) for queue in (queues or [])]
            for host, queues in replies.items()
            if isinstance(queues, list)
        }
        self._consumers = (time.monotonic(), consumers)
        return consumers

    async def graphs(self, request: Request) -> Response:
        return _json(self.monitor.stats.graphs())

    async def metrics(self, request: Request) -> Response:
        online = sum(1 for worker in self.monitor.workers() if worker["alive"])
        current = await run_in_threadpool(self.monitor.history.counts)
        return PlainTextResponse(
            self.monitor.stats.prometheus(online, current), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def healthz(self, request: Request) -> Response:
        ok = self.monitor.receiving
        return _json({"status": "ok" if ok else "degraded", "receiving_events": ok}, 200 if ok else 503)

    # -- page support -----------------------------------------------------------------------

    async def settings(self, request: Request) -> Response:
        return _json(
            {
                "read_only": self.config.read_only,
                "auth": "token" if self.config.token else "basic" if self.config.username else None,
                "app": self.app.main,
                "started": self.monitor.started_at,
            }
        )

    async def csrf(self, request: Request) -> Response:
        token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        response = _json({"token": token, "header": "X-CSRF-Token"})
        set_csrf_cookie(response, token)
        return response

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def stream(self, request: Request) -> Response:
        loop = asyncio.get_running_loop()
        notes: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=STREAM_QUEUE_SIZE)
        dropped = False  # set (on the loop) when a note did not fit: the page must reload its data

        def offer(note: dict[str, Any]) -> None:
            nonlocal dropped
            if notes.full():
                dropped = True
                return
            notes.put_nowait(note)

        def listener(note: dict[str, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(offer, note)

        unsubscribe = self.monitor.subscribe(listener)

        async def events() -> AsyncIterator[str]:
            nonlocal dropped
            try:
                yield "retry: 2000\nevent: hello\ndata: {}\n\n"
                while True:
                    try:
                        first = await asyncio.wait_for(notes.get(), timeout=15.0)
                    except TimeoutError:
                        yield ": ping\n\n"
                        continue
                    await asyncio.sleep(0.2)  # coalesce a burst into one message
                    if dropped:  # the page missed notes: drop the rest too and have it reload
                        while not notes.empty():
                            notes.get_nowait()
                        dropped = False
                        yield "event: resync\ndata: {}\n\n"
                        continue
                    batch = [first]
                    while not notes.empty() and len(batch) < 500:
                        batch.append(notes.get_nowait())
                    yield f"event: update\ndata: {json.dumps(batch, default=repr)}\n\n"
            finally:
                unsubscribe()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def set_csrf_cookie(response: Response, token: str) -> None:
    response.set_cookie(CSRF_COOKIE, token, httponly=False, samesite="strict", path="/")


def api_routes(api: Api) -> list[Route]:
    def guard(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def wrapped(request: Request) -> Response:
            try:
                response: Response = await endpoint(request)
                return response
            except ApiError as exc:
                return _json({"error": exc.message}, exc.status)
            except AttributeError as exc:  # e.g. app.control missing a command
                return _json({"error": f"not supported by this celeriac: {exc}"}, 501)

        return wrapped

    return [
        Route("/api/workers", guard(api.workers)),
        Route("/api/workers/{hostname}", guard(api.worker)),
        Route("/api/workers/{hostname}/{action}", guard(api.worker_action), methods=["POST"]),
        Route("/api/tasks", guard(api.tasks)),
        Route("/api/tasks/names", guard(api.task_names)),
        Route("/api/tasks/send", guard(api.send), methods=["POST"]),
        Route("/api/tasks/{task_id}", guard(api.task)),
        Route("/api/tasks/{task_id}/result", guard(api.task_result)),
        Route("/api/tasks/{task_id}/revoke", guard(api.revoke), methods=["POST"]),
        Route("/api/queues", guard(api.queues)),
        Route("/api/graphs", guard(api.graphs)),
        Route("/api/settings", guard(api.settings)),
        Route("/api/csrf", guard(api.csrf)),
        Route("/api/openapi.json", guard(api.openapi)),
        Route("/api/stream", api.stream),
        Route("/metrics", guard(api.metrics)),
        Route("/healthz", guard(api.healthz)),
    ]
