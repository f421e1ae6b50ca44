"""The README's Python snippets run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_s4d_snippet_runs():
    blocks = python_blocks()
    assert any("from ssm.layers import S4D" in block for block in blocks)
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
