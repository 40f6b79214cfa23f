"""The OpenAPI 3.1 document of the dashboard's REST API (served at ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

__all__ = ["OPENAPI"]


def _obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


_STR = {"type": "string"}
_NUM = {"type": "number"}
_INT = {"type": "integer"}
_NULLABLE_NUM = {"type": ["number", "null"]}
_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _param(name: str, where: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "schema": schema, "description": description}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": False, "content": {"application/json": {"schema": schema}}}


_HOST = _param("hostname", "path", _STR, "Worker node name, e.g. celeriac@host")
_TASK = _param("task_id", "path", _STR, "Task id")
_ACTIONS = {
    "pool-grow": ("Add processes/threads to the worker's pool", _obj(n=_INT)),
    "pool-shrink": ("Remove processes/threads from the worker's pool", _obj(n=_INT)),
    "autoscale": ("Set the autoscale bounds", _obj(max=_INT, min=_INT)),
    "add-consumer": ("Start consuming a queue", _obj(queue=_STR)),
    "cancel-consumer": ("Stop consuming a queue", _obj(queue=_STR)),
    "rate-limit": ("Set a task's rate limit ('10/m'; null removes it)", _obj(task_name=_STR, rate=_STR)),
    "time-limit": ("Set a task's soft/hard time limits (seconds)", _obj(task_name=_STR, soft=_NUM, hard=_NUM)),
    "shutdown": ("Shut the worker down (warm)", _obj()),
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "celeriac dashboard API",
        "version": "1",
        "description": "Monitor and control a celeriac cluster. Mutating requests need the X-CSRF-Token header "
        "(the value of the celeriac_csrf cookie; GET /api/csrf sets one) unless authenticated with a bearer token.",
    },
    "components": {
        "securitySchemes": {
            "basic": {"type": "http", "scheme": "basic"},
            "bearer": {"type": "http", "scheme": "bearer"},
        },
        "schemas": {
            "Error": _obj(error=_STR),
            "Worker": _obj(
                hostname=_STR,
                alive={"type": "boolean"},
                active=_INT,
                processed=_INT,
                succeeded=_INT,
                failed=_INT,
                retried=_INT,
                loadavg={"type": "array", "items": _NUM},
                freq=_NUM,
                last_heartbeat=_NULLABLE_NUM,
                online={
                    "type": ["number", "null"],
                    "description": "When it came online (worker-online), else when the dashboard first heard from it",
                },
                offline={
                    "type": ["number", "null"],
                    "description": "When it went offline or its heartbeats stopped; null while alive",
                },
                sw_ident=_STR,
                sw_ver=_STR,
                sw_sys=_STR,
            ),
            "Task": _obj(
                uuid=_STR,
                name=_STR,
                state={
                    "type": "string",
                    "enum": ["PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED"],
                },
                worker=_STR,
                args=_STR,
                kwargs=_STR,
                result=_STR,
                exception=_STR,
                traceback=_STR,
                runtime=_NULLABLE_NUM,
                retries=_INT,
                queue=_STR,
                parent_id=_STR,
                root_id=_STR,
                children={"type": "array", "items": _STR},
                sent=_NULLABLE_NUM,
                received=_NULLABLE_NUM,
                started=_NULLABLE_NUM,
                succeeded=_NULLABLE_NUM,
                failed=_NULLABLE_NUM,
                timestamp=_NULLABLE_NUM,
            ),
        },
    },
    "security": [{}, {"basic": []}, {"bearer": []}],
    "paths": {
        "/api/workers": {
            "get": {
                "summary": "Workers with heartbeat state and task counters",
                "responses": {
                    "200": _ok(_obj(workers={"type": "array", "items": {"$ref": "#/components/schemas/Worker"}}))
                },
            }
        },
        "/api/workers/{hostname}": {
            "get": {
                "summary": "One worker: state plus inspect replies (stats, queues, registered tasks, masked conf, ...)",
                "parameters": [_HOST],
                "responses": {
                    "200": _ok(_obj(worker={"$ref": "#/components/schemas/Worker"}, inspect=_obj())),
                    "404": _ERROR,
                },
            }
        },
        **{
            f"/api/workers/{{hostname}}/{action}": {
                "post": {
                    "summary": summary,
                    "parameters": [_HOST],
                    "requestBody": _body(schema),
                    "responses": {
                        "200": _ok(_obj(worker=_STR, action=_STR, reply=_obj())),
                        "400": _ERROR,
                        "403": _ERROR,
                        "504": _ERROR,
                    },
                }
            }
            for action, (summary, schema) in _ACTIONS.items()
        },
        "/api/tasks": {
            "get": {
                "summary": "Tasks from the history: filtered, sorted, paginated",
                "parameters": [
                    _param("state", "query", _STR),
                    _param("name", "query", _STR),
                    _param("worker", "query", _STR),
                    _param("since", "query", _NUM, "unix time"),
                    _param("until", "query", _NUM, "unix time"),
                    _param("search", "query", _STR, "substring of args, kwargs, result or id"),
                    _param(
                        "sort",
                        "query",
                        {
                            "type": "string",
                            "enum": ["timestamp", "name", "state", "worker", "runtime", "received", "started", "uuid"],
                        },
                    ),
                    _param("order", "query", {"type": "string", "enum": ["asc", "desc"]}),
                    _param("offset", "query", _INT),
                    _param("limit", "query", _INT, "at most 500"),
                ],
                "responses": {
                    "200": _ok(
                        _obj(
                            total=_INT,
                            offset=_INT,
                            limit=_INT,
                            tasks={"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
                        )
                    ),
                    "400": _ERROR,
                },
            }
        },
        "/api/tasks/names": {
            "get": {
                "summary": "Task names in the history",
                "responses": {"200": _ok(_obj(names={"type": "array", "items": _STR}))},
            }
        },
        "/api/tasks/send": {
            "post": {
                "summary": "Send a task by name",
                "requestBody": _body(
                    _obj(name=_STR, args={"type": "array"}, kwargs={"type": "object"}, queue=_STR, countdown=_NUM)
                ),
                "responses": {"202": _ok(_obj(task_id=_STR, name=_STR)), "400": _ERROR, "403": _ERROR},
            }
        },
        "/api/tasks/{task_id}": {
            "get": {
                "summary": "One task from the history",
                "parameters": [_TASK],
                "responses": {"200": _ok({"$ref": "#/components/schemas/Task"}), "404": _ERROR},
            }
        },
        "/api/tasks/{task_id}/result": {
            "get": {
                "summary": "The task's state and result from the result store",
                "parameters": [_TASK],
                "responses": {"200": _ok(_obj(task_id=_STR, state=_STR, result={}, traceback=_STR))},
            }
        },
        "/api/tasks/{task_id}/revoke": {
            "post": {
                "summary": "Revoke a task; terminate=true also kills it if running",
                "parameters": [_TASK],
                "requestBody": _body(
                    _obj(
                        terminate={"type": "boolean"},
                        signal=_STR,
                        name={"type": ["string", "null"], "description": "The task's name, for the history"},
                    )
                ),
                "responses": {
                    "200": _ok(_obj(task_id=_STR, terminate={"type": "boolean"}, replies={"type": "array"})),
                    "400": _ERROR,
                    "403": _ERROR,
                },
            }
        },
        "/api/queues": {
            "get": {
                "summary": "Queues with their length and consumers",
                "responses": {
                    "200": _ok(
                        _obj(
                            queues={
                                "type": "array",
                                "items": _obj(name=_STR, length=_INT, consumers={"type": "array", "items": _STR}),
                            }
                        )
                    )
                },
            }
        },
        "/api/graphs": {
            "get": {
                "summary": "Succeeded/failed per second, runtime percentiles per task name, queue lengths over time",
                "responses": {
                    "200": _ok(
                        _obj(throughput={"type": "array"}, runtimes={"type": "object"}, queues={"type": "array"})
                    )
                },
            }
        },
        "/api/settings": {
            "get": {
                "summary": "What the pages need: read-only mode, auth kind",
                "responses": {"200": _ok(_obj(read_only={"type": "boolean"}))},
            }
        },
        "/api/csrf": {
            "get": {
                "summary": "A CSRF token (also set as the celeriac_csrf cookie)",
                "responses": {"200": _ok(_obj(token=_STR, header=_STR))},
            }
        },
        "/api/stream": {
            "get": {
                "summary": "Server-sent events: 'update' carries batches of {type, uuid, state, hostname} notes; "
                "'resync' means notes were dropped (the client fell behind): reload everything",
                "responses": {"200": {"description": "text/event-stream"}},
            }
        },
        "/api/openapi.json": {"get": {"summary": "This document", "responses": {"200": _ok({"type": "object"})}}},
        "/metrics": {
            "get": {
                "summary": "Prometheus text format",
                "responses": {"200": {"description": "text/plain; version=0.0.4"}},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: 200 while events are received",
                "security": [{}],
                "responses": {"200": _ok(_obj(status=_STR)), "503": _ok(_obj(status=_STR))},
            }
        },
    },
}
