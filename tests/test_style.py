"""The code stays as STYLE.md asks: ruff clean, fully typed (mypy, disallow_untyped_defs),
and mypy sees the real `medseq.*` modules, so calls between modules are checked.

The design card's layout keeps `pipeline/` and `components/` at the top of the repository
while they install as `medseq.pipeline` and `medseq.components` (setup.py maps them). The
library's own imports are relative (`from ...pipeline import features`), so a tool that
reads the tree by folders (an IDE, pyright, an import-graph tool) resolves every one of
them, and the installed names still work. mypy names modules by their packages, not
folders, so it runs on a view of the tree under the import names: a folder `medseq/`
whose packages are links to the real folders.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO

PACKAGES = ("pipeline", "components", "schemas", "data_samples")


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "pipeline", "components", "tests", "benchmarks"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def medseq_view(root: Path, copy: bool = False) -> Path:
    """`root/medseq/{pipeline,components,...}`: links to (or copies of) the repository's folders."""
    package = root / "medseq"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""The medseq namespace, as setup.py installs it."""\n')
    for name in PACKAGES:
        if copy:
            shutil.copytree(REPO / name, package / name, ignore=shutil.ignore_patterns("__pycache__", "dicom"))
        else:
            (package / name).symlink_to(REPO / name, target_is_directory=True)
    return root


def mypy(view: Path) -> subprocess.CompletedProcess[str]:
    args = ["--config-file", str(REPO / "pyproject.toml"), "--cache-dir", str(view / ".mypy_cache"), "-p", "medseq"]
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=view, capture_output=True, text=True,
                          env={"MYPYPATH": str(view), "PATH": "/usr/bin:/bin"})


def test_mypy_is_clean(tmp_path):
    result = mypy(medseq_view(tmp_path))
    assert result.returncode == 0, result.stdout
    assert "Success: no issues found in" in result.stdout


def test_mypy_checks_a_call_from_one_module_into_another(tmp_path):
    view = medseq_view(tmp_path, copy=True)
    planted = view / "medseq" / "components" / "evaluate" / "executor.py"
    planted.write_text(planted.read_text() + (
        "\n\ndef _planted() -> None:\n"
        "    reveal_type(tree_fingerprint)\n"
        "    tree_fingerprint(123)  # expects str | Path, from medseq.pipeline.fingerprints\n"))
    result = mypy(view)
    assert result.returncode == 1, result.stdout
    assert 'Argument 1 to "tree_fingerprint" has incompatible type "int"' in result.stdout
    assert 'Revealed type is "def (root: str | pathlib.Path' in result.stdout  # the real signature, not Any


def _resolves_in_tree(path: Path, level: int, module: str | None, names: list[str]) -> bool:
    """A relative import resolved by folders alone, as an IDE or pyright reads the tree."""
    base = path.parent
    for _ in range(level - 1):
        base = base.parent
    target = base.joinpath(*module.split(".")) if module else base
    if target.with_suffix(".py").is_file():
        return True  # names from a module
    if not (target / "__init__.py").is_file():
        return False
    # names from a package: its submodules, or names its __init__ defines (not checked here)
    return all((target / f"{n}.py").is_file() or (target / n / "__init__.py").is_file() or
               n in (target / "__init__.py").read_text() for n in names)


# Code that runs outside the package: the bodies of KFP's lightweight components are
# shipped as source text and run as a module of their own in the step's image, where only
# the installed name (medseq.pipeline.kfp_steps) resolves.
SHIPPED_AS_SOURCE = ("pipeline/kfp_components.py",)


def test_the_trees_own_imports_are_relative_and_resolve_by_folder():
    """Library code imports its own modules relatively, so a tool that reads the tree
    (IDEs, pyright, import-graph tools) sees every edge; the installed names stay medseq.*."""
    import ast

    absolute, unresolved, relative = [], [], 0
    for top in PACKAGES:
        for path in sorted((REPO / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level:
                    relative += 1
                    if not _resolves_in_tree(path, node.level, node.module, [a.name for a in node.names]):
                        unresolved.append(f"{path.relative_to(REPO)}:{node.lineno}")
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                    where = f"{path.relative_to(REPO)}:{node.lineno}"
                    if str(path.relative_to(REPO)) not in SHIPPED_AS_SOURCE:
                        absolute += [where for n in names if n.split(".")[0] == "medseq"]
    assert not absolute and not unresolved and relative > 200, (absolute, unresolved)


SHARED = ("io", "model", "preprocessing")  # what every stage may import: no stage owns them
# The only edges from one stage to another, each to the other stage's entry: push ships
# export's artifacts (export.export), predict reads a folder through ingest's own steps
# and in-process executor, a federated site trains through train's own step and stream,
# evaluate shows the candidate another task's synthetic series (synth.series_frames).
STAGE_EDGES = {("push", "export"), ("predict", "ingest"), ("federate", "train"), ("evaluate", "synth")}


def _stage_imports() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> where, for every relative import between
    two packages of components/."""
    import ast

    edges: dict[tuple[str, str], list[str]] = {}
    components = REPO / "components"
    for path in sorted(components.rglob("*.py")):
        rel = path.relative_to(components).parts
        if len(rel) < 2:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            target = base.joinpath(*(node.module or "").split(".")) if node.module else base
            try:
                parts = target.relative_to(components).parts
            except ValueError:
                continue  # pipeline/: the stage contract, config, errors
            names = [a.name for a in node.names]
            imported = parts[0] if parts else names[0]
            if imported != rel[0]:
                edges.setdefault((rel[0], imported), []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    return edges


def test_stages_are_siblings_over_the_shared_packages():
    """Each stage imports the shared packages (io, model, preprocessing) and no other
    stage, except the edges named above; the shared packages import no stage."""
    edges = _stage_imports()
    stray = {edge: where for edge, where in edges.items() if edge[1] not in SHARED and edge not in STAGE_EDGES}
    assert not stray, stray
    upward = {edge: where for edge, where in edges.items() if edge[0] in SHARED and edge[1] not in SHARED}
    assert not upward, upward
    assert {e for e in edges if e[1] in SHARED} >= {("ingest", "io"), ("train", "model"), ("validate", "io")}


def _module_of(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def test_no_module_imports_itself_back():
    """No import circle between the tree's modules, counting every import, also those made
    inside a function (a lazy import is still a dependency)."""
    import ast

    graph: dict[str, set[str]] = {}
    for top in PACKAGES:
        for path in sorted((REPO / top).rglob("*.py")):
            here = _module_of(path)
            package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.ImportFrom) and node.level):
                    continue
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *(node.module or "").split(".")]).strip(".")
                names = [f"{target}.{a.name}" for a in node.names]
                found = [n for n in names if (REPO / n.replace(".", "/")).with_suffix(".py").is_file()
                         or (REPO / n.replace(".", "/") / "__init__.py").is_file()]
                graph.setdefault(here, set()).update(found or [target])
    # Imports of a package's own __init__ by its modules are how Python loads packages: not a circle.
    edges = {m: {t for t in ts if t != m and not m.startswith(t + ".")} for m, ts in graph.items()}
    circles, state = [], {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                circles.append(trail[trail.index(target):] + [target] if target in trail else [module, target])
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not circles, circles
