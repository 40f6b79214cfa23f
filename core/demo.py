"""Tasks for ``celeriac demo``: a worker process and this client exchange them through the
broker named by ``CELERIAC_BROKER_URL`` (an SQLite file in a temporary directory)."""

from __future__ import annotations

import time

from .app import Celeriac

app = Celeriac("celeriac.demo", set_as_current=False)


@app.task(name="demo.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="demo.divide")
def divide(x: float, y: float) -> float:
    return x / y


@app.task(name="demo.slow_square", track_started=True)
def slow_square(x: int, seconds: float = 0.2) -> int:
    time.sleep(seconds)
    return x * x
