"""The example in docs/models.md runs as written, against the Ollama double."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

from .doubles import ModelDouble, Reply


async def test_the_docs_example_runs(repo_root: Path, ollama_double: ModelDouble) -> None:
    page = (repo_root / "docs" / "models.md").read_text()
    [code] = re.findall(r"```python\n(.*?)```", page, re.DOTALL)
    assert "http://127.0.0.1:11434" in code
    code = code.replace("http://127.0.0.1:11434", ollama_double.url)
    ollama_double.push(Reply.text("Hello!"), Reply.text("Hello again!"))
    namespace: dict[str, Any] = {}
    exec(
        "async def example():\n" + textwrap.indent(code, "    ") + "\n    return locals()",
        namespace,
    )
    seen = await namespace["example"]()
    assert seen["response"].message.content == "Hello!"
    assert seen["chunk"].response.message.content == "Hello again!"
    assert [r.body["stream"] for r in ollama_double.requests] == [False, True]
