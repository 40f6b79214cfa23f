"""Built-in serializers.

* ``json`` (``application/json``) — JSON in kombu's dialect, with type envelopes for datetimes,
  decimals, UUIDs, bytes and tuples; trusted, so accepted by default.

Each serializer lives in a private module; one that needs a third-party library imports it only
when the library is installed, so a missing extra just leaves that serializer out.
"""

from __future__ import annotations

from collections.abc import Sequence

import celeriac
from celeriac.plugins.serializers._json import JSONSerializer

__all__ = ["JSONSerializer", "celeriac_serializers"]


@celeriac.hookimpl
def celeriac_serializers() -> Sequence[celeriac.Serializer]:
    """Register the built-in serializers."""
    return [JSONSerializer()]
