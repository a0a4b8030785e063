"""The package installs under one ``oneshot`` namespace, and its layers never import upward."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Layer of each installed package, bottom first. Siblings of one rank never import each other.
LAYERS = {
    "oneshot.errors": 0,
    "oneshot.atomic": 1, "oneshot.locks": 1, "oneshot.memory": 1, "oneshot.lazy": 1,
    "oneshot.data": 2,
    "oneshot.embedder": 3, "oneshot.index": 3,
    "oneshot.pipelines": 4,
    # inside pipelines/, bottom first: the reader, scores from vectors, where batch work runs and
    # the report, the jobs, the command line
    "oneshot.pipelines.reading": 5,
    "oneshot.pipelines.evaluation": 6,
    "oneshot.pipelines.engines": 7, "oneshot.pipelines.reporting": 7,
    "oneshot.pipelines.jobs": 8,
    "oneshot.pipelines.cli": 9,
}
FOLDERS = {"data": "oneshot.data", "embedder": "oneshot.embedder", "index": "oneshot.index",
           "pipelines": "oneshot.pipelines", "oneshot": "oneshot"}


def layer_of(module: str) -> tuple[str, int] | None:
    """(package, rank) of a module name inside ``oneshot``; None for the root or outside names."""
    for package, rank in sorted(LAYERS.items(), key=lambda item: -len(item[0])):
        if module == package or module.startswith(package + "."):
            return package, rank
    return None


def imported_modules(source: str) -> list[str]:
    """Every absolute module name a Python source imports, lazily inside functions included."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def layer_violations(module: str, source: str) -> list[str]:
    """Imports of ``module`` that go up a layer or sideways to a sibling package."""
    own = layer_of(module)
    if own is None:
        return []
    problems = []
    for name in imported_modules(source):
        target = layer_of(name)
        if target is None or target[0] == own[0]:
            continue
        if target[1] >= own[1]:
            problems.append(f"{module} imports {name} ({own[0]} is rank {own[1]}, {target[0]} rank {target[1]})")
    return problems


def installed_modules() -> dict[str, Path]:
    """module name -> file, for every module of the four folders and the oneshot root."""
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


def test_no_module_imports_upward_or_sideways():
    problems = [p for name, path in installed_modules().items() for p in layer_violations(name, path.read_text())]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module, source", [
    ("oneshot.embedder.train", "from oneshot.pipelines.evaluation.episodes import sample_episodes"),
    ("oneshot.embedder.train", "def f():\n    import oneshot.index.metric\n"),
    ("oneshot.index.store", "from oneshot.embedder import artifact"),
    ("oneshot.data.folders", "from oneshot.embedder.preprocess import Recipe"),
    ("oneshot.errors", "from oneshot.data.archive import ImageArchive"),
])
def test_the_layer_check_catches_a_broken_rule(module, source):
    assert layer_violations(module, source)


def test_new_modules_never_import_through_an_alias():
    """Aliases are for users; the package itself imports the new names (no warning at import)."""
    from oneshot.pipelines import _moved

    used = {name for path in installed_modules().values() for name in imported_modules(path.read_text())}
    assert not used & set(_moved.MOVED), sorted(used & set(_moved.MOVED))


@pytest.mark.parametrize("module, source", [
    ("oneshot.pipelines.evaluation.knn", "from oneshot.pipelines.jobs.embed import embed_to_store"),
    ("oneshot.pipelines.evaluation.episodes", "from oneshot.pipelines.engines.local import encode_source"),
    ("oneshot.pipelines.reading", "from oneshot.pipelines.evaluation.metrics import accuracy"),
    ("oneshot.pipelines.engines.local", "def f():\n    from oneshot.pipelines.reporting import report\n"),
    ("oneshot.pipelines.reporting.report", "from oneshot.pipelines.jobs.store import load_store"),
    ("oneshot.pipelines.jobs.embed", "from oneshot.pipelines.cli.options import rejects_for"),
])
def test_the_layer_check_catches_an_upward_import_inside_pipelines(module, source):
    assert layer_violations(module, source)


def test_the_layer_check_allows_downward_imports():
    assert not layer_violations("oneshot.pipelines.jobs", "from oneshot.index.store import EmbeddingSet\n"
                                                          "from oneshot.data.folders import read_gallery")
    assert not layer_violations("oneshot.embedder.artifact", "from oneshot.atomic import atomic_path")


def test_every_public_name_resolves():
    import oneshot

    for name in oneshot.__all__:
        assert getattr(oneshot, name) is not None, name
    with pytest.raises(AttributeError):
        oneshot.no_such_name  # noqa: B018


def test_optional_extras_import_without_them():
    code = "import oneshot.index.gpu as g; print(g.gpu_count())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(result.stdout.strip()) >= 0


def test_api_runs_from_a_folder_with_its_own_data_package_and_index_module(tmp_path, synthetic_gallery,
                                                                             tiny_model_path):
    """A user's project with ``data/``, ``index.py``, ``embedder.py`` and ``pipelines/`` of its own."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "__init__.py").write_text("USER_DATA = True\n")
    (tmp_path / "index.py").write_text("USER_INDEX = True\n")
    (tmp_path / "embedder.py").write_text("USER_EMBEDDER = True\n")
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "__init__.py").write_text("USER_PIPELINES = True\n")
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import data, index, embedder, pipelines
        import oneshot
        from oneshot.pipelines.jobs import embed_gallery
        store = embed_gallery({str(synthetic_gallery)!r}, "out/g.parquet", {str(tiny_model_path)!r},
                              show_progress=False)
        built = oneshot.build_index("out/g.parquet", "out/g.faiss")
        answers = oneshot.identify_images({str(synthetic_gallery)!r}, "out/g.faiss", {str(tiny_model_path)!r})
        assert data.USER_DATA and index.USER_INDEX and embedder.USER_EMBEDDER and pipelines.USER_PIPELINES
        print(len(store), len(built), len(answers))
    """))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["60", "60", "60"]


@pytest.mark.slow
def test_the_wheel_holds_only_the_oneshot_package(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(REPO)], capture_output=True, text=True)
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(f"cannot build a wheel here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("oneshot-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
        names = set(archive.namelist())
    assert top == {"oneshot", wheel.name.split("-py")[0] + ".dist-info"}, top
    for package in ("data", "embedder", "index", "pipelines"):
        assert f"oneshot/{package}/__init__.py" in names
    assert "oneshot/embedder/weights/default.safetensors" in names
    assert "oneshot/embedder/weights/handwriting_v1.safetensors" in names
    assert "oneshot/embedder/weights/handwriting_v2.safetensors" in names
    assert "oneshot/embedder/weights/handwriting_ensemble.safetensors" in names
    assert "oneshot/embedder/weights/handwriting_ensemble_v1.safetensors" in names
    assert "oneshot/embedder/weights/face.safetensors" in names and "oneshot/embedder/weights/face_landmarks_5.dat" in names
    missing = [name for name, path in installed_modules().items() if _wheel_path(name, path) not in names]
    assert not missing, f"modules left out of the wheel (list their package in pyproject.toml): {missing}"


def _wheel_path(module: str, path: Path) -> str:
    """Where a module's file lies inside the wheel: ``oneshot/pipelines/jobs/embed.py``."""
    return module.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")


def test_every_subfolder_is_a_package_with_a_docstring():
    """A folder of modules is a package (an ``__init__.py`` saying what it holds), never a bare namespace."""
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            init = path.parent / "__init__.py"
            assert init.is_file(), f"{path.parent.relative_to(REPO)} has modules but no __init__.py"
            assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(REPO)} has no docstring"


def test_source_checkout_resolves_oneshot_imports_through_links():
    """``oneshot/<folder>`` links to the top-level folder, so editors and type checkers find ``oneshot.*``."""
    for folder, package in FOLDERS.items():
        if folder == "oneshot":
            continue
        link = REPO / "oneshot" / folder
        assert link.is_symlink() and link.resolve() == (REPO / folder).resolve(), f"{link} should link to ../{folder}"
