"""The `isolated` marker: a test that kills the interpreter fails alone; the others still report."""

import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_a_native_crash_fails_its_test_and_the_rest_still_run(tmp_path):
    (tmp_path / "test_cases.py").write_text(textwrap.dedent("""
        import os, signal
        import pytest

        @pytest.fixture(scope="module")
        def shared():
            return 2

        def test_in_this_process(shared):  # a module fixture set up here, before the isolated tests
            assert shared == 2

        @pytest.mark.isolated
        def test_before():
            assert 1 + 1 == 2

        @pytest.mark.isolated
        def test_crashes():
            os.kill(os.getpid(), signal.SIGSEGV)

        @pytest.mark.isolated
        def test_after():
            assert True

        @pytest.mark.isolated
        def test_fails_normally():
            assert 1 == 2, "an ordinary failure"
    """))
    (tmp_path / "test_later.py").write_text("def test_next_module():\n    assert True\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "isolation", "-rA", "test_cases.py", "test_later.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(TESTS)},
    )
    out = run.stdout
    assert "2 failed, 4 passed" in out, out  # the next module's setup is not disturbed either
    assert "PASSED test_cases.py::test_before" in out and "PASSED test_cases.py::test_after" in out
    assert "FAILED test_cases.py::test_crashes" in out and "died while running this test" in out
    assert "FAILED test_cases.py::test_fails_normally" in out and "an ordinary failure" in out
