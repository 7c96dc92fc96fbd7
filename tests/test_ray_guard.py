"""The guard of tests/conftest.py: a test not marked slow that starts Ray fails with what to do, before any
Ray starts where it can; slow tests, and tests that only import Ray, are left alone. Each case runs in an
inner pytest session in this process (pytester), with the guard's hooks and a stand-in ray_cluster fixture;
none starts Ray."""

from __future__ import annotations

import os

import pytest
import ray

pytest_plugins = ["pytester"]

INNER_CONFTEST = """
import pytest

from tests.conftest import pytest_runtest_setup, pytest_runtest_teardown, pytest_unconfigure

SET_UP = []


@pytest.fixture(scope="session")
def ray_cluster():
    SET_UP.append("ray_cluster")  # a stand-in: the guard refuses the test before any fixture is set up
    yield
"""
MARKERS = "[pytest]\nmarkers =\n    slow: slow\n    ray: ray\n"


def inner_session(pytester: pytest.Pytester, tests: str) -> pytest.RunResult:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makeini(MARKERS)
    pytester.makepyfile(test_inner=tests)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "--strict-markers")


def test_ray_init_and_ray_fixtures_in_a_test_not_marked_slow_fail_before_ray_starts(pytester):
    result = inner_session(pytester, """
import pytest
import ray

from conftest import SET_UP


def test_calls_ray_init():
    try:
        ray.init(num_cpus=1)
    except Exception:  # the guard's failure is no Exception: code under test cannot swallow it
        pass


def test_makes_a_ray_node():
    from ray._private.node import Node

    Node(None, head=True, shutdown_at_exit=False, spawn_reaper=False)


def test_uses_the_ray_cluster(ray_cluster):
    pass


@pytest.mark.ray
def test_is_marked_ray():
    pass


@pytest.mark.slow
def test_slow_but_not_marked_ray_uses_the_ray_cluster(ray_cluster):
    pass


def test_nothing_was_set_up_or_started():
    assert SET_UP == [] and not ray.is_initialized()
""")  # fmt: skip
    # refused at setup (errors), or at the call (failures) and again at teardown (errors)
    result.assert_outcomes(passed=1, failed=2, errors=5)
    out = result.stdout.str()
    hint = "so that -m 'not slow' starts no Ray"
    for test, what in [
        ("test_calls_ray_init", "starts or joins Ray (ray.init or a Ray node)"),
        ("test_makes_a_ray_node", "starts or joins Ray (ray.init or a Ray node)"),
        ("test_uses_the_ray_cluster", "uses ray_cluster"),
        ("test_is_marked_ray", "is marked ray"),
    ]:
        assert f"test_inner.py::{test} is not marked slow but {what}: a test that starts Ray" in out, test
    assert out.count(hint) >= 4
    assert "test_slow_but_not_marked_ray_uses_the_ray_cluster uses ray_cluster, which starts Ray: mark it " \
        "@pytest.mark.ray too" in out  # fmt: skip
    # a refused call is reported again at teardown, in case the code under test swallowed the failure
    assert "test_calls_ray_init is not marked slow but called ray.init or made a Ray node (1 time(s))" in out


def test_a_ray_session_started_by_a_subprocess_fails_the_test_at_its_teardown(pytester):
    result = inner_session(pytester, """
import os
from pathlib import Path


def test_a_job_in_a_subprocess_starts_ray():  # what ray.init() in a child writes under RAY_TMPDIR
    (Path(os.environ["RAY_TMPDIR"]) / "ray" / "session_2026-01-01_00-00-00_000000_1").mkdir(parents=True)


def test_the_next_test_starts_clean():
    assert not (Path(os.environ["RAY_TMPDIR"]) / "ray").exists()
""")  # fmt: skip
    result.assert_outcomes(passed=2, errors=1)
    assert (
        "test_a_job_in_a_subprocess_starts_ray is not marked slow but started a Ray session in RAY_TMPDIR "
        "(session_2026-01-01_00-00-00_000000_1)"
    ) in result.stdout.str()


def test_slow_tests_and_tests_that_only_use_ray_apis_are_left_alone(pytester):
    outer = (id(ray.init), id(ray._private.node.Node.__init__))  # as this test's own guard left them
    outer_tmpdir = os.environ.get("RAY_TMPDIR")
    result = inner_session(pytester, f"""
import os
from pathlib import Path

import pytest
import ray
from ray.air._internal.filelock import TempFileLock


def test_ray_apis_that_start_nothing(tmp_path):
    with TempFileLock(str(tmp_path / "x")):  # writes its lock files under RAY_TMPDIR
        pass
    assert list(Path(os.environ["RAY_TMPDIR"]).iterdir()) != []
    assert ray.remote(lambda: 1) is not None and not ray.is_initialized()


@pytest.mark.slow
@pytest.mark.ray
def test_slow_is_not_guarded():
    assert (id(ray.init), id(ray._private.node.Node.__init__)) == {outer!r}
    assert os.environ.get("RAY_TMPDIR") == {outer_tmpdir!r}
""")  # fmt: skip
    result.assert_outcomes(passed=2)
