"""Cycles between pipelines are reported as cycles naming their members (issue 2), at
module level (names resolve as they are defined) and inside a function; unknown names stay
"unknown dependency". Every definition is recorded by name in a process-wide registry."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest

import volga
from volga import Entity, pipeline
from volga.api.decorators import defined
from volga.testing.quickstart import UserSpentInfo

MODULE_HEAD = """
from volga import Entity, pipeline
from volga.testing.quickstart import UserSpentInfo
"""


def load(tmp_path, name: str, body: str):
    path = tmp_path / f"{name}.py"
    path.write_text(MODULE_HEAD + textwrap.dedent(body))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def test_two_pipeline_cycle_at_module_level(tmp_path):
    with pytest.raises(volga.PipelineDefinitionError) as caught:
        load(tmp_path, "cycles_two", """
            @pipeline(dependencies=["mod_cyc_b"], output=UserSpentInfo)
            def mod_cyc_a(b: Entity) -> Entity:
                return b

            @pipeline(dependencies=["mod_cyc_a"], output=UserSpentInfo)
            def mod_cyc_b(a: Entity) -> Entity:
                return a
        """)
    assert str(caught.value) == "pipeline mod_cyc_b: dependency cycle mod_cyc_a -> mod_cyc_b -> mod_cyc_a"
    assert "unknown dependency" not in str(caught.value)


def test_three_pipeline_cycle_at_module_level(tmp_path):
    with pytest.raises(volga.PipelineDefinitionError, match=r"^pipeline mod3_c: dependency cycle mod3_a -> mod3_b -> mod3_c -> mod3_a$"):
        load(tmp_path, "cycles_three", """
            @pipeline(dependencies=["mod3_b"], output=UserSpentInfo)
            def mod3_a(b: Entity) -> Entity:
                return b

            @pipeline(dependencies=["mod3_c"], output=UserSpentInfo)
            def mod3_b(c: Entity) -> Entity:
                return c

            @pipeline(dependencies=["mod3_a"], output=UserSpentInfo)
            def mod3_c(a: Entity) -> Entity:
                return a
        """)


def test_self_dependency_is_a_cycle(tmp_path):
    with pytest.raises(volga.PipelineDefinitionError, match=r"^pipeline mod_self: dependency cycle mod_self -> mod_self$"):
        load(tmp_path, "cycles_self", """
            @pipeline(dependencies=["mod_self"], output=UserSpentInfo)
            def mod_self(me: Entity) -> Entity:
                return me
        """)


def test_cycle_inside_a_function():
    @pipeline(dependencies=["fn_cyc_b"], output=UserSpentInfo)
    def fn_cyc_a(b: Entity) -> Entity:
        return b

    with pytest.raises(volga.PipelineDefinitionError) as caught:
        @pipeline(dependencies=["fn_cyc_a"], output=UserSpentInfo)
        def fn_cyc_b(a: Entity) -> Entity:
            return a

    assert str(caught.value) == "pipeline fn_cyc_b: dependency cycle fn_cyc_a -> fn_cyc_b -> fn_cyc_a"


def test_unknown_names_stay_unknown(tmp_path):
    module = load(tmp_path, "unknown_dep", """
        @pipeline(dependencies=["mod_never_defined"], output=UserSpentInfo)
        def mod_waiting(x: Entity) -> Entity:
            return x
    """)
    want = r"^pipeline mod_waiting: unknown dependency 'mod_never_defined' \(no @source or @pipeline of that name is known\)$"
    with pytest.raises(volga.PipelineDefinitionError, match=want):
        volga.Client(data_dir=tmp_path).explain([module.mod_waiting])


def test_forward_reference_resolves_once_defined(tmp_path):
    module = load(tmp_path, "forward_ref", """
        from volga import source
        from volga.sources import MemorySource
        from volga.testing.quickstart import Order, User
        import polars as pl

        @pipeline(dependencies=["fwd_base"], output=UserSpentInfo)
        def fwd_top(base: Entity) -> Entity:
            return base

        @source(UserSpentInfo)
        def fwd_base() -> "volga.Source":
            return MemorySource([])
    """)
    assert "fwd_top" in volga.Client(data_dir=tmp_path).explain([module.fwd_top])


def test_every_definition_is_recorded_latest_wins():
    @pipeline(dependencies=["rec_missing"], output=UserSpentInfo)
    def rec_pipe(x: Entity) -> Entity:
        return x

    first = rec_pipe
    assert defined("rec_pipe") is first

    @pipeline(dependencies=["rec_missing"], output=UserSpentInfo)
    def rec_pipe(x: Entity) -> Entity:  # noqa: F811 (a notebook cell run again)
        return x

    assert defined("rec_pipe") is rec_pipe is not first
    assert defined("no_definition_has_this_name") is None
