"""Conformance suites that every transport and result store must pass.

Third-party plugin authors run the same suites as the built-ins: subclass the suite in a test
module and provide the fixture it needs::

    import pytest
    from celeriac.testing.conformance import TransportSuite

    class TestMyTransport(TransportSuite):
        @pytest.fixture
        def make_transport(self):
            def make(**options):
                return MyTransport("my://localhost/0", options)
            return make
"""

from __future__ import annotations

from .resultstore import ResultStoreSuite
from .transport import TransportSuite

__all__ = ["ResultStoreSuite", "TransportSuite"]
