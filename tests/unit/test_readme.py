"""The examples of the README and of the documentation work.

README.rst is parsed with docutils, as PyPI renders it; so is every page of
the Sphinx site (Sphinx's own directives and roles, which plain
docutils does not know, are left out: ``nox -s docs`` checks those).

* The README renders without a docutils warning (PyPI refuses such a README).
* Every Python block of the README and of every page of docs/ compiles: each
  ``.. code-block:: python``, and each ``::`` literal block (Python, as Sphinx
  highlights it here) that looks like Python (it starts with an import, a definition,
  a decorator, an assignment or a call).
* A self-contained block runs: one whose module-level code uses no name that it
  does not define or import. It runs in a fresh namespace with the test
  settings loaded, so a wrong import, a renamed setting helper or a decorator
  order that ``@idempotent`` refuses fails here.
* A fragment (it uses names from the prose around it, like ``viewsets`` or
  ``request``) only compiles, and its imports of django_idempotency, Django
  and DRF must work.
* To keep a self-contained block from running, put the comment
  ``.. readme-test: compile-only`` just before it, in the README or a page
  (before the paragraph that ends in ``::``, for a literal block).
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

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.rst"
# Every page of docs/. changelog.rst only includes CHANGELOG.rst, which has no code.
DOC_PAGES = sorted((ROOT / "docs").glob("*.rst"))
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

    page: str = "README.rst"

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def parse_readme(path: Path = README) -> tuple[nodes.document, str]:
    warnings = io.StringIO()
    doctree = docutils_core.publish_doctree(
        path.read_text(encoding="utf-8"),
        source_path=str(path),
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


def _in_system_message(node: nodes.Node) -> bool:
    # docutils quotes a directive that it does not know (Sphinx's toctree,
    # autofunction...) as a literal block inside its error message.
    while node.parent is not None:
        node = node.parent
        if isinstance(node, nodes.system_message):
            return True
    return False


def readme_blocks(path: Path = README) -> list[Block]:
    doctree, _ = parse_readme(path)
    page = path.relative_to(ROOT).as_posix()
    blocks = []
    for node in doctree.findall(nodes.literal_block):
        if _in_system_message(node):
            continue
        classes = node.get("classes", [])
        language = classes[1] if len(classes) > 1 and classes[0] == "code" else ""
        blocks.append(
            Block(node.line or 0, language, node.astext(), _marked_compile_only(node), page)
        )
    return blocks


def looks_like_python(block: Block) -> bool:
    if block.language:
        return block.language in {"python", "python3", "py"}
    for line in block.source.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return bool(PYTHON_START.match(line))
    return False


BLOCKS = readme_blocks() + [block for page in DOC_PAGES for block in readme_blocks(page)]
PYTHON_BLOCKS = [b for b in BLOCKS if looks_like_python(b)]
JSON_BLOCKS = [b for b in BLOCKS if b.language == "json"]


def free_names(source: str) -> set[str]:
    """Names the block's module-level code uses but neither defines nor imports."""
    table = symtable.symtable(source, "<readme>", "exec")
    free = {
        symbol.get_name()
        for symbol in table.get_symbols()
        if symbol.is_referenced()
        and not (symbol.is_assigned() or symbol.is_imported())
        and not hasattr(builtins, symbol.get_name())
    }
    # "INSTALLED_APPS += [...]" extends a name that the block does not define.
    for statement in ast.parse(source).body:
        if isinstance(statement, ast.AugAssign) and isinstance(statement.target, ast.Name):
            free.add(statement.target.id)
    return free


def test_readme_renders_without_warnings() -> None:
    _, warnings = parse_readme()
    assert warnings == ""


def test_readme_has_python_examples() -> None:
    # Guards the extraction itself: the quick start alone has several.
    assert len([b for b in PYTHON_BLOCKS if b.page == "README.rst"]) >= 2


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: p.name)
def test_doc_page_is_checked(page: Path) -> None:
    # A page in DOC_PAGES that was renamed or removed would silently drop out.
    assert page.is_file()


def test_docs_have_python_examples() -> None:
    pages = {b.page for b in PYTHON_BLOCKS}
    assert {"docs/quickstart.rst", "docs/recipes.rst", "docs/testing.rst"} <= pages


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


def test_json_examples_parse() -> None:
    for block in JSON_BLOCKS:
        try:
            json.loads(block.source)
        except ValueError as exc:
            raise AssertionError(block.id) from exc


def _project_url(name: str) -> str:
    # pyproject.toml's [project.urls] is the one place that names the
    # repository and the docs (tomllib is Python 3.11+, so a plain match).
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(rf'^{name} = "([^"]+)"$', pyproject, re.M)
    assert match, f"pyproject.toml has no {name} in [project.urls]"
    return match.group(1).rstrip("/")


def _readme_urls() -> list[str]:
    doctree, _ = parse_readme()
    urls = [node["refuri"] for node in doctree.findall(nodes.reference) if "refuri" in node]
    urls += [node["uri"] for node in doctree.findall(nodes.image)]
    return urls


def test_readme_links_and_images_resolve() -> None:
    """Every link and image of the README is absolute (PyPI shows the README
    alone) and leads to the repository or the docs that pyproject.toml names,
    to a file or page that exists in this tree."""
    repository = _project_url("Repository")
    docs = _project_url("Documentation")
    raw = repository.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    urls = _readme_urls()
    assert urls
    for url in urls:
        assert url.startswith("https://"), url
        if url.startswith(raw):
            assert (ROOT / url.removeprefix(raw)).is_file(), url
        elif url.startswith(docs):
            page = url.removeprefix(docs).removeprefix("/en/latest").strip("/")
            page = page.split("#")[0].removesuffix(".html")
            assert page == "" or (ROOT / "docs" / f"{page}.rst").is_file(), url
        else:
            assert url.startswith(repository), url


def test_every_setting_is_described_once_on_the_settings_page() -> None:
    """docs/settings.rst has an entry (``.. setting::``) for each setting that
    conf.py knows, and no other page describes one again: they link to it
    with ``:setting:``, so two descriptions cannot drift apart."""
    from django_idempotency.conf import DEFAULTS

    settings_page = ROOT / "docs" / "settings.rst"
    entries = re.findall(r"^\.\. setting:: (\S+)$", settings_page.read_text(encoding="utf-8"), re.M)
    assert sorted(entries) == sorted(DEFAULTS)
    for page in [README, *DOC_PAGES]:
        if page == settings_page:
            continue
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"^\.\. setting::", text, re.M), page.name
        # A definition-list term of its own is a second description.
        assert not re.search(r"^``IDEMPOTENCY_[A-Z_]+``$", text, re.M), page.name
