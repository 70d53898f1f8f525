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

        pytestmark = pytest.mark.isolated

        def test_before():
            assert 1 + 1 == 2

        def test_crashes():
            os.kill(os.getpid(), signal.SIGSEGV)

        def test_after():
            assert True

        def test_fails_normally():
            assert 1 == 2, "an ordinary failure"
    """))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "isolation", "-rA", "test_cases.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(TESTS)},
    )
    out = run.stdout
    assert "2 failed, 2 passed" in out, out
    assert "PASSED test_cases.py::test_before" in out and "PASSED test_cases.py::test_after" in out
    assert "FAILED test_cases.py::test_crashes" in out and "died while running this test" in out
    assert "FAILED test_cases.py::test_fails_normally" in out and "an ordinary failure" in out
