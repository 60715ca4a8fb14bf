"""The public namespace: sorted, complete, and every name reports a public module."""

from __future__ import annotations

import importlib
import inspect
import typing

import agentrt
import agentrt.testing
import msgspec


def test_all_is_sorted_and_unique() -> None:
    assert list(agentrt.__all__) == sorted(set(agentrt.__all__))


def test_every_public_error_is_exported() -> None:
    errors = importlib.import_module("agentrt._errors")
    assert set(errors.__all__) <= set(agentrt.__all__)


def test_exports_say_agentrt_not_a_private_module() -> None:
    for name in agentrt.__all__:
        obj = getattr(agentrt, name)
        module = getattr(obj, "__module__", "agentrt")
        assert not module.split(".")[-1].startswith("_"), f"{name} has __module__ {module}"


def test_no_private_name_leaks_into_the_namespace() -> None:
    public = {n for n in dir(agentrt) if not n.startswith("_")}
    # submodules are attributes once imported; they are not names we export
    modules = {n for n in public if inspect.ismodule(getattr(agentrt, n))}
    assert public - modules == set(agentrt.__all__)


def test_type_hints_of_public_structs_resolve() -> None:
    for name in agentrt.__all__:
        obj = getattr(agentrt, name)
        if isinstance(obj, type) and issubclass(obj, msgspec.Struct):
            typing.get_type_hints(obj)  # fails if an annotation names a private type


def test_testing_module_exports() -> None:
    assert agentrt.testing.__all__ == ["InMemoryTransport", "subject_matches"]
    assert agentrt.testing.subject_matches("a.*.c", "a.b.c")
    assert agentrt.testing.subject_matches("a.>", "a.b.c")
    assert not agentrt.testing.subject_matches("a.>", "a")
    assert not agentrt.testing.subject_matches("a.*", "a.b.c")
