"""`@pytest.mark.isolated`: run tests that train or export in a child Python process.

TensorFlow and PyTorch can kill the interpreter natively while training (see
docs/training-crash.md); run in the test process, such a crash would end the whole
run and report nothing. Marked tests are instead run by one child `pytest` process
(all of them, in collection order: one interpreter start for the lot), whose reports
are streamed back and shown as if the tests had run here. A test during which the
child dies fails, naming the signal and the child's last output; the child is then
started again for the tests that had not run yet.

A plugin (`-p isolation`, or registered by `conftest.py`); the child is recognised by `KERASPRUNE_ISOLATED_REPORTS`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ENV = "KERASPRUNE_ISOLATED_REPORTS"
MARK = "isolated"
TIMEOUT_S = 1800


def in_child() -> bool:
    return bool(os.environ.get(ENV))


# -- the child: stream every report to the file named by ENV ------------------------------------------
_config = None


def _emit(record: dict) -> None:
    with open(os.environ[ENV], "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def pytest_runtest_logstart(nodeid, location):
    if in_child():
        _emit({"start": nodeid})


def pytest_runtest_logreport(report):
    if in_child():
        _emit({"report": _config.hook.pytest_report_to_serializable(config=_config, report=report)})


# -- the parent -----------------------------------------------------------------------------------------
def pytest_configure(config):
    config.addinivalue_line("markers", f"{MARK}: runs in a child Python process (a native crash fails the test)")
    config._kp_isolated = {"pending": [], "results": {}}
    global _config
    _config = config


def pytest_collection_modifyitems(config, items):
    if in_child():
        return
    for item in items:
        if item.get_closest_marker(MARK):  # with pytest-xdist (--dist loadgroup): all on one worker, one child
            item.add_marker(pytest.mark.xdist_group("isolated"))
    config._kp_isolated["pending"] = [i.nodeid for i in items if i.get_closest_marker(MARK)]


def _run_child(config, nodeids: list[str]) -> tuple[dict, str | None, str]:
    """Run `nodeids` in one child; (reports by nodeid, the nodeid it died in or None, output tail)."""
    with tempfile.TemporaryDirectory(prefix="kp-isolated-") as tmp:
        path = Path(tmp) / "reports.jsonl"
        path.touch()
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "isolation", *nodeids]
        if config.option.markexpr:
            args += ["-m", config.option.markexpr]
        here = str(Path(__file__).resolve().parent)  # so that `-p isolation` imports this module
        env = {**os.environ, ENV: str(path), "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
        try:
            run = subprocess.run(
                args, cwd=config.rootpath, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
            )
            code, out = run.returncode, (run.stdout + run.stderr)
        except subprocess.TimeoutExpired as e:
            code, out = -signal.SIGKILL, f"child timed out after {TIMEOUT_S} s\n{e.stdout or ''}{e.stderr or ''}"
        results: dict[str, list] = {}
        current = None
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "start" in record:
                current = record["start"]
                results.setdefault(current, [])
            else:
                data = record["report"]
                results.setdefault(data["nodeid"], []).append(data)
                if data["when"] == "teardown":
                    current = None
        died = current if (current is not None and code != 0) else None
        if died is None and code not in (0, 1, 5) and nodeids and nodeids[0] not in results:
            died = nodeids[0]  # the child failed before its first test (import error, crash at start)
    return results, died, out[-4000:]


def _crash_reports(item, why: str) -> list:
    common = dict(nodeid=item.nodeid, location=item.location, keywords={k: 1 for k in item.keywords})
    return [
        pytest.TestReport(outcome="passed", longrepr=None, when="setup", **common),
        pytest.TestReport(outcome="failed", longrepr=why, when="call", **common),
        pytest.TestReport(outcome="passed", longrepr=None, when="teardown", **common),
    ]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if in_child() or not item.get_closest_marker(MARK):
        return None
    state = item.config._kp_isolated
    if item.nodeid not in state["results"]:
        pending = [n for n in state["pending"] if n not in state["results"]]
        start = pending.index(item.nodeid) if item.nodeid in pending else 0
        todo = pending[start:] or [item.nodeid]
        results, died, tail = _run_child(item.config, todo)
        state["results"].update({k: v for k, v in results.items() if k != died})
        if died is not None:
            state["results"][died] = f"the child process died while running this test. Its last output:\n{tail}"
        if item.nodeid not in state["results"]:
            state["results"][item.nodeid] = f"the child process reported nothing for this test. Its output:\n{tail}"
    outcome = state["results"][item.nodeid]
    hook = item.ihook
    hook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    if isinstance(outcome, str) or not outcome:
        reports = _crash_reports(item, outcome or "the child process reported nothing for this test")
    else:
        reports = [hook.pytest_report_from_serializable(config=item.config, data=d) for d in outcome]
    for report in reports:
        hook.pytest_runtest_logreport(report=report)
    # Tear down what earlier tests set up and the next one does not share (module fixtures), as
    # pytest's own teardown step would: nothing ran here, but the setup stack must move on.
    item.session._setupstate.teardown_exact(nextitem)
    hook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
