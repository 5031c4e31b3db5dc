"""Test-only helpers that must not ship in the ``volga`` package (servers for integration tests).

Importable as ``tests.support`` because ``tests/conftest.py`` puts the repository root on
``sys.path`` (pytest runs with ``--import-mode=importlib``, which does not do that itself).
"""
