"""The minimal backend of docs/backends.md is tests/backends/dict_backend.py, to the
character: the page shows the code the contract suite runs (the ``dict`` parameter of
the ``backend`` fixture), and tests/test_docs_examples.py executes the block itself."""

from __future__ import annotations

import difflib
from pathlib import Path

from tests.backends import dict_backend
from tests.test_docs_examples import ROOT, doc_blocks

PAGE = ROOT / "docs" / "backends.md"


def test_the_docs_example_is_the_tested_backend():
    [block] = [b for b in doc_blocks([PAGE]) if "class DictCache(BaseCache)" in b.source]
    assert block.skip_reason is None, "the example must run with the other docs blocks"
    tested = Path(dict_backend.__file__).read_text()
    diff = "".join(difflib.unified_diff(
        tested.splitlines(keepends=True), block.source.splitlines(keepends=True),
        "tests/backends/dict_backend.py", block.id))
    assert block.source == tested, (
        f"docs/backends.md and tests/backends/dict_backend.py differ; copy one onto the "
        f"other:\n{diff}")
