"""The README's examples work: README.rst is parsed with docutils, as PyPI renders it.

* The README renders without a docutils warning (PyPI refuses such a README).
* Every Python block compiles: each ``.. code-block:: python``, and each ``::``
  literal block that looks like Python (it starts with an import, a definition,
  a decorator, an assignment or a call).
* A self-contained block runs: one whose module-level code uses no name that it
  does not define or import. It runs in a fresh namespace with the test
  settings loaded, so a wrong import, a renamed setting helper or a decorator
  order that ``@idempotent`` refuses fails here.
* A fragment (it uses names from the prose around it, like ``viewsets`` or
  ``request``) only compiles, and its imports of django_idempotency, Django
  and DRF must work.
* To keep a self-contained block from running, put the comment
  ``.. readme-test: compile-only`` just before it (before the paragraph that
  ends in ``::``, for a literal block).
* ``.. code-block:: json`` blocks must parse as JSON.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import re
import symtable
from dataclasses import dataclass
from pathlib import Path

import pytest

docutils_core = pytest.importorskip("docutils.core")
from docutils import nodes  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.rst"
CHECKED_IMPORTS = {"django_idempotency", "django", "rest_framework"}
COMPILE_ONLY_MARK = "readme-test: compile-only"
# A literal block "looks like Python" when its first line of code does.
PYTHON_START = re.compile(
    r"^(from \S+ import |import \w|class \w|def \w|async def \w|@\w"
    r"|[A-Za-z_][\w.]*(\[[^\]]*\])?\s*=[^=]|[A-Za-z_][\w.]*\()"
)


@dataclass
class Block:
    line: int
    language: str  # "python", "json", ... or "" for a plain literal block
    source: str
    compile_only_mark: bool

    @property
    def id(self) -> str:
        return f"README.rst:{self.line}"


def parse_readme() -> tuple[nodes.document, str]:
    warnings = io.StringIO()
    doctree = docutils_core.publish_doctree(
        README.read_text(encoding="utf-8"),
        source_path=str(README),
        settings_overrides={
            "syntax_highlight": "none",  # no Pygments needed
            "warning_stream": warnings,
            "report_level": 2,
            "halt_level": 5,
        },
    )
    return doctree, warnings.getvalue()


def _marked_compile_only(node: nodes.Element) -> bool:
    parent = node.parent
    index = parent.index(node)
    for earlier in parent[max(0, index - 2) : index][::-1]:
        if isinstance(earlier, nodes.comment) and earlier.astext().strip() == COMPILE_ONLY_MARK:
            return True
        if not (isinstance(earlier, nodes.paragraph) and earlier.astext().endswith(":")):
            break
    return False


def readme_blocks() -> list[Block]:
    doctree, _ = parse_readme()
    blocks = []
    for node in doctree.findall(nodes.literal_block):
        classes = node.get("classes", [])
        language = classes[1] if len(classes) > 1 and classes[0] == "code" else ""
        blocks.append(Block(node.line or 0, language, node.astext(), _marked_compile_only(node)))
    return blocks


def looks_like_python(block: Block) -> bool:
    if block.language:
        return block.language in {"python", "python3", "py"}
    for line in block.source.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return bool(PYTHON_START.match(line))
    return False


BLOCKS = readme_blocks()
PYTHON_BLOCKS = [b for b in BLOCKS if looks_like_python(b)]
JSON_BLOCKS = [b for b in BLOCKS if b.language == "json"]


def free_names(source: str) -> set[str]:
    """Names the block's module-level code uses but neither defines nor imports."""
    table = symtable.symtable(source, "<readme>", "exec")
    return {
        symbol.get_name()
        for symbol in table.get_symbols()
        if symbol.is_referenced()
        and not (symbol.is_assigned() or symbol.is_imported())
        and not hasattr(builtins, symbol.get_name())
    }


def test_readme_renders_without_warnings() -> None:
    _, warnings = parse_readme()
    assert warnings == ""


def test_readme_has_python_examples() -> None:
    # Guards the extraction itself: the quick start alone has several.
    assert len(PYTHON_BLOCKS) >= 3


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_python_example(block: Block) -> None:
    code = compile(block.source, block.id, "exec")
    if block.compile_only_mark or free_names(block.source):
        _check_imports(block)
        return
    exec(code, {"__name__": "readme_example"})


def _check_imports(block: Block) -> None:
    for statement in ast.walk(ast.parse(block.source)):
        if isinstance(statement, ast.ImportFrom) and statement.level == 0:
            modules = [statement.module or ""]
        elif isinstance(statement, ast.Import):
            modules = [alias.name for alias in statement.names]
        else:
            continue
        if any(module.split(".")[0] in CHECKED_IMPORTS for module in modules):
            exec(compile(ast.Module([statement], []), block.id, "exec"), {})


@pytest.mark.parametrize("block", JSON_BLOCKS, ids=lambda b: b.id)
def test_json_example(block: Block) -> None:
    json.loads(block.source)
