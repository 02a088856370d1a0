"""The package layout of docs/architecture.md: every import points down the layers.

Each module's imports (module level and inside functions alike) are read with `ast`, without
importing anything, and each project module is given the rank of its layer; a module may import
its own layer or lower ones, never a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shogi", "learner", "actors", "keisei_ray")

# (module prefix, rank): the longest matching prefix wins.
LAYERS: tuple[tuple[str, int], ...] = (
    ("shogi", 0),
    ("keisei_ray.config", 1),  # the shared contracts
    ("keisei_ray.config_loading", 1),
    ("keisei_ray.codec", 1),
    ("keisei_ray.events", 1),
    ("keisei_ray.logs", 1),
    ("keisei_ray.files", 1),
    ("keisei_ray.text", 1),
    ("learner", 2),
    ("actors", 3),
    ("keisei_ray.store", 4),
    ("keisei_ray.arena", 5),
    ("keisei_ray.training", 6),
    ("keisei_ray.api", 7),
    ("keisei_ray", 7),  # the package itself: the public API
    ("keisei_ray.bench", 8),
    ("keisei_ray.console", 8),  # the CLI's shared parts (bench commands use them too)
    ("keisei_ray.cli", 9),
)


def rank(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for prefix, value in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[0]):
            best = (len(prefix), value)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    """Project modules `path` imports: `from X import y` is X.y when that is a module, else X."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if is_module(sub) else base)
    # The bare package runs first for any of its modules anyway; it keeps its heavy imports lazy.
    return {n for n in found if n.split(".")[0] in PACKAGES and n != "keisei_ray"}


def all_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    assert all(rank(module_name(path)) is not None for path in all_modules())


def test_the_layout_has_the_role_folders() -> None:
    for folder in ("training", "store", "arena", "bench"):
        assert (ROOT / "keisei_ray" / folder / "__init__.py").is_file(), folder


@pytest.mark.parametrize("path", all_modules(), ids=module_name)
def test_imports_point_down(path: Path) -> None:
    own = rank(module_name(path))
    assert own is not None
    upward = []
    for name in sorted(imports_of(path)):
        target = rank(name)
        if target is not None and target > own:
            upward.append(f"{name} (layer {target} > {own})")
    assert not upward, f"{module_name(path)} imports upward: {', '.join(upward)}"


def test_architecture_doc_lists_every_module() -> None:
    """docs/architecture.md names each module once under its folder, and nothing else."""
    text = (ROOT / "docs" / "architecture.md").read_text("utf-8")
    block = text.split("## Modules", 1)[1]
    listed: set[str] = set()
    folder = ""
    for line in block.splitlines():
        if line.rstrip().endswith("/") or line.startswith("keisei_ray/  "):
            folder = line.split()[0].rstrip("/")
        elif line.startswith("  ") and line.split()[0].endswith(".py"):
            listed.add(f"{folder}/{line.split()[0]}")
    actual = {str(p.relative_to(ROOT)) for p in all_modules() if p.name != "__init__.py"}
    assert listed == actual, (f"missing from the doc: {sorted(actual - listed)}; "
                              f"not in the tree: {sorted(listed - actual)}")
