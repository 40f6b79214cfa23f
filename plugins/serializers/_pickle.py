"""``pickle`` — Python's pickle, content type ``application/x-python-serialize``.

**Decoding a pickle runs code chosen by whoever wrote it.** Anyone who can put a message on
the broker can then run anything on every worker that accepts pickle. So this serializer is
not trusted by default: a worker decodes pickle only when ``accept_content`` (or, for
results, ``result_accept_content``) names it, and the worker logs a warning at start when it
does. Use it only on a broker nobody else can write to, ideally with signed messages
(``[celeriac.security] sign_key``).

Wire format: ``pickle.dumps(obj, protocol=4)``, which every Python 3.4+ reads (and Celery's
pickle serializer writes by default). Pickle round-trips every picklable value exactly: tuples,
sets, time zones by name, ``nan`` and ``inf`` included.
"""

from __future__ import annotations

import pickle
from typing import Any, ClassVar

import celeriac

__all__ = ["PICKLE_PROTOCOL", "PickleSerializer"]

#: Protocol 4: readable by every supported Python, and what kombu writes by default.
PICKLE_PROTOCOL = 4


class PickleSerializer(celeriac.Serializer):
    """Python's pickle: any picklable object, accepted only when named in ``accept_content``."""

    name: ClassVar[str] = "pickle"
    content_type: ClassVar[str] = "application/x-python-serialize"
    content_encoding: ClassVar[str] = "binary"
    trusted_by_default: ClassVar[bool] = False

    def dumps(self, obj: Any) -> bytes:
        """Pickle ``obj``; an unpicklable object (a lambda, a local class) raises ``TypeError``."""
        try:
            return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)
        except (pickle.PicklingError, AttributeError) as exc:  # AttributeError: "Can't pickle local object"
            raise TypeError(str(exc)) from None
        except RecursionError:
            raise ValueError("cannot pickle: nesting too deep") from None

    def loads(self, data: bytes) -> Any:
        """Unpickle ``data`` — runs whatever code the pickle names; see the module docstring."""
        return pickle.loads(data)
