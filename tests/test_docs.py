"""The code blocks of the docs run as written (they cannot drift from the code)."""

import re
from pathlib import Path

import pytest

import kerasprune as kp

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("index", range(len(python_blocks(ROOT / "docs" / "rules.md"))))
def test_rule_author_examples_run(index):
    """Each worked example registers its rule and checks, with its own asserts, that the layer
    prunes (removed == masked, smaller weights)."""
    block = python_blocks(ROOT / "docs" / "rules.md")[index]
    assert "register_rule(" in block and "assert " in block, "a worked example registers a rule and checks it"
    before = kp.rules.registered()
    try:
        exec(compile(block, f"rules.md[{index}]", "exec"), {})
        added = set(kp.rules.registered()) - set(before)
        assert added, "the example registered its layer's rule"
    finally:
        for cls in set(kp.rules.registered()) - set(before):
            kp.unregister_rule(cls)
    assert set(kp.rules.registered()) == set(before)


def test_rule_missing_analyze_is_refused_by_name():
    class NoAnalyze(kp.Rule):
        pass

    class Dummy:
        pass

    with pytest.raises(TypeError, match=r"NoAnalyze does not implement analyze\(view, g\)"):
        kp.register_rule(Dummy, NoAnalyze())
    with pytest.raises(TypeError, match="instance of kerasprune.Rule"):
        kp.register_rule(Dummy, lambda view, g: [])


def test_api_reference_examples_run(tmp_path, monkeypatch):
    """docs/api.md's blocks run in order in one namespace (later ones use the earlier model)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for index, block in enumerate(python_blocks(ROOT / "docs" / "api.md")):
        exec(compile(block, f"api.md[{index}]", "exec"), namespace)
    assert namespace["plan"].removed, "the example plan removes a channel"
    assert namespace["cmp"].flops_ratio < 1 and (tmp_path / "pruned.keras").exists()
    assert any((tmp_path / "plots").glob("*.png"))
