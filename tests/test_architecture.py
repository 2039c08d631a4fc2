"""The index owns its store: no module outside `retrieval/store/` and `retrieval/index.py` imports the store's
rows, sessions or backends, names a `STATUS_` constant of it, or reaches into an index's `.store`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = ("retrieval", "indexer", "cli", "server")
PRIVATE = ("retrieval.store.schema", "retrieval.store.index_store", "retrieval.store.database",
           "retrieval.store.backends")
OWNERS = (REPO / "retrieval" / "store", REPO / "retrieval" / "index.py")


def _modules() -> list[Path]:
    return sorted(path for layer in LAYERS for path in (REPO / layer).rglob("*.py")
                  if not any(path == owner or owner in path.parents for owner in OWNERS))


def _reaches(path: Path) -> list[str]:
    """Each place in `path` that reaches the store around its owner, as `line: what`."""
    found = []
    store_names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            names = [alias.name for alias in node.names]
            if node.module in PRIVATE or (node.module == "retrieval.store" and set(names) & {
                    module.rsplit(".", 1)[1] for module in PRIVATE}):
                found.append(f"{node.lineno}: from {node.module} import {', '.join(names)}")
            if node.module.startswith("retrieval.store"):
                store_names.update(name for name in names if name.startswith("STATUS_"))
        elif isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {alias.name}" for alias in node.names if alias.name in PRIVATE]
        elif isinstance(node, ast.Attribute) and node.attr == "store":
            found.append(f"{node.lineno}: .store")
    found += [f"imports {name} from the store" for name in sorted(store_names)]
    return found


def test_the_layers_are_found() -> None:
    modules = _modules()
    assert len(modules) > 50 and not any(path.name == "index_store.py" for path in modules)


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(REPO)))
def test_only_the_index_reaches_its_store(path: Path) -> None:
    assert _reaches(path) == [], f"{path.relative_to(REPO)} reaches the store around the index"


def test_the_check_sees_each_kind_of_reach(tmp_path: Path) -> None:
    module = tmp_path / "reaching.py"
    module.write_text("from retrieval.store.schema import STATUS_OK, ImageRecord\n"
                      "import retrieval.store.backends\n"
                      "from retrieval.store.vector_index import VectorIndex\n"
                      "rows = index.store.indexed_images()\n")
    assert _reaches(module) == ["1: from retrieval.store.schema import STATUS_OK, ImageRecord",
                                "2: import retrieval.store.backends", "4: .store",
                                "imports STATUS_OK from the store"]
