"""The ASGI application: pages, static assets, the API, security middleware, lifespan."""

from __future__ import annotations

import contextlib
import html
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ._api import Api, api_routes, set_csrf_cookie
from ._history import open_history
from ._monitor import Monitor
from ._security import CSRF_COOKIE, SecurityMiddleware
from ._settings import DashboardConfig

if TYPE_CHECKING:
    from celeriac import Celeriac

__all__ = ["PAGES", "create_app"]

STATIC = Path(__file__).parent / "static"
#: Page name -> title.
PAGES = {
    "workers": "Workers",
    "worker": "Worker",
    "tasks": "Tasks",
    "task": "Task",
    "queues": "Queues",
    "graphs": "Graphs",
}


def _page(name: str) -> Any:
    template = (STATIC / "index.html").read_text()

    async def endpoint(request: Request) -> Response:
        argument = next(iter(request.path_params.values()), "")
        body = (
            template.replace("{{page}}", name)
            .replace("{{title}}", html.escape(PAGES[name] + (f" {argument}" if argument else "")))
            .replace("{{argument}}", html.escape(argument, quote=True))
        )
        response = HTMLResponse(
            body,
            headers={
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin",
            },
        )
        if not request.cookies.get(CSRF_COOKIE):
            set_csrf_cookie(response, secrets.token_urlsafe(24))
        return response

    return endpoint


def create_app(
    app: Celeriac,
    config: DashboardConfig | None = None,
    *,
    monitor: Monitor | None = None,
    start_monitor: bool = True,
    inspect_timeout: float = 1.0,
) -> Starlette:
    """The dashboard for ``app`` as an ASGI application (serve it with uvicorn).

    ``monitor`` defaults to one fed by ``app``'s events, with the history the config names;
    with ``start_monitor`` its threads run while the application runs (lifespan).
    """
    config = config or DashboardConfig.from_conf(app.conf)
    if monitor is None:
        history = open_history(config.history_db, config.history_max_tasks, config.history_max_age)
        monitor = Monitor(app, history, queues=config.queues, queue_interval=config.queue_interval)
    api = Api(monitor, config, inspect_timeout=inspect_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if start_monitor:
            monitor.start()
        try:
            yield
        finally:
            if start_monitor:
                monitor.stop()
            api.close()

    async def home(request: Request) -> Response:
        return RedirectResponse("/workers")

    routes = [
        Route("/", home),
        Route("/workers", _page("workers")),
        Route("/workers/{hostname}", _page("worker")),
        Route("/tasks", _page("tasks")),
        Route("/tasks/{task_id}", _page("task")),
        Route("/queues", _page("queues")),
        Route("/graphs", _page("graphs")),
        *api_routes(api),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    web = Starlette(routes=routes, lifespan=lifespan)
    web.state.monitor = monitor
    web.state.config = config
    web.add_middleware(SecurityMiddleware, config=config)
    return web
