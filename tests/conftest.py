"""Shared fixtures: one real nats-server for the session, unique cluster names per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentrt._natsserver import NatsServer

_clusters = itertools.count(1)


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's NATS settings must not leak into the tests.
    for key in list(os.environ):
        if key.startswith("AGENTRT_") or key.startswith("NATS_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a free loopback port, shared by the session.

    Fails loudly (NatsServerError with the server's log) if it never becomes ready.
    """
    server = NatsServer(store_dir=tmp_path_factory.mktemp("nats"), name="test")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def cluster_name() -> str:
    """A cluster name unique to this test, so tests sharing the server never see each other."""
    return f"t{os.getpid()}-{next(_clusters)}"


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
