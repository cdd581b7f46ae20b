"""End-to-end tests against real servers.

A package, so that pytest imports tests/e2e/conftest.py as ``e2e.conftest``: a second plain
``conftest`` module would replace tests/conftest.py in ``sys.modules`` for modules that import it.
"""
