"""The README's library example runs as written (only its epoch count is lowered, visibly)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def library_example() -> str:
    """The first ```python block after the README's '## Library' heading."""
    text = README.read_text()
    section = text[text.index("## Library"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md has no python block in its Library section"
    return match.group(1)


@pytest.mark.slow
def test_readme_library_example_runs(tmp_path, monkeypatch, capsys):
    code = library_example()
    assert code.count("epochs=20") == 1
    code = code.replace("epochs=20", "epochs=2")  # the only change: 2 epochs instead of 20
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "NDCG@10" in out and "Trainable params" in out
    assert namespace["item_ids"].shape == (3, 10)
    assert type(namespace["restored"]).__name__ == "AMR"
    assert (tmp_path / "runs" / "amr" / "serving" / "1" / "saved_model.pb").exists()
    assert (tmp_path / "runs" / "amr" / "best.weights.h5").exists()
