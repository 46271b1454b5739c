"""mlcwb as a package: declared dependencies match the imports, conda and pip agree, metadata has
one source, and a wheel built from the checkout works without it."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

import mlcwb
from mlcwb.paths import repo_root

ROOT = repo_root()
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name

# Distributions that belong in a named extra, not in the core dependencies.
EXTRA_OF = {"trl": "trl", "openai": "judge", "datasets": "hf", "tensorboard": "track"}
# Modules that may be probed for with try/except ImportError without being declared anywhere,
# with the reason: installing them changes what mlcwb does.
# (kaleido, which viz.save_figure probes for PNG/SVG, is declared in the dev extra.)
UNDECLARED_PROBES: dict[str, str] = {}


def _name(requirement: str) -> str:
    """The canonical distribution name of a requirement string (PEP 503)."""
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _meta() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _declared() -> dict[str, list[str]]:
    """Requirement strings by group: ``core`` and each extra, self-references (mlcwb[x]) left out."""
    project = _meta()["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {group: [r for r in reqs if _name(r) != "mlcwb"] for group, reqs in groups.items()}


def _pyproject() -> dict[str, str]:
    return {_name(r): r.replace(" ", "") for reqs in _declared().values() for r in reqs}


def _environment() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    found: dict[str, str] = {}
    for dep in env["dependencies"]:
        for req in dep["pip"] if isinstance(dep, dict) else [dep]:
            if req.startswith("-e") or _name(req) in {"python", "pip"}:
                continue
            name = CONDA_NAMES.get(_name(req), _name(req))
            found[name] = name + req.replace(" ", "")[len(Requirement(req).name):]
    return found


def test_environment_yml_matches_pyproject():
    py, conda = _pyproject(), _environment()
    assert sorted(set(py) - set(conda)) == [], "in pyproject.toml but not environment.yml"
    assert sorted(set(conda) - set(py)) == [], "in environment.yml but not pyproject.toml"
    assert {n: conda[n] for n in py} == py, "version bounds differ"


def test_environment_yml_asks_for_the_python_pyproject_requires():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.replace("python", "", 1) == _meta()["project"]["requires-python"]


def test_torch_is_not_pinned_to_a_cpu_build():
    torch_req = _pyproject()["torch"]
    assert "==" not in torch_req and "+cpu" not in torch_req


def test_the_tested_environment_satisfies_every_declared_bound():
    """The upper caps (transformers) stay honest: what the suite runs on is inside them."""
    for group, reqs in _declared().items():
        for req in map(Requirement, reqs):
            try:
                installed = importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                continue  # an extra this environment lacks; its own tests skip
            assert req.specifier.contains(installed, prereleases=True), f"{group}: {req} vs {installed}"


def test_transformers_is_capped_because_mlcwb_uses_its_cache_internals():
    spec = Requirement(_pyproject()["transformers"]).specifier
    assert any(s.operator == "<" for s in spec), "cap transformers at the newest tested minor"


def test_version_has_one_source():
    meta = _meta()
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mlcwb.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|rc\d+)?", mlcwb.__version__)


def test_license_and_typing_marker_are_shipped():
    meta = _meta()
    assert meta["project"]["license"] == "Apache-2.0" and meta["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS" in text
    assert (ROOT / "mlcwb" / "py.typed").is_file()
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["mlcwb"]
    assert "Typing :: Typed" in meta["project"]["classifiers"]


def test_trl_is_an_extra_and_dev_installs_it():
    declared = _declared()
    assert not any(_name(r) == "trl" for r in declared["core"])
    assert any(_name(r) == "trl" for r in declared["trl"])
    assert "mlcwb[trl]" in _meta()["project"]["optional-dependencies"]["dev"]


def test_datasets_is_the_hf_extra_and_dev_installs_it_and_kaleido():
    declared = _declared()
    assert not any(_name(r) in ("datasets", "kaleido") for r in declared["core"])
    assert any(_name(r) == "datasets" for r in declared["hf"])
    assert "mlcwb[hf]" in _meta()["project"]["optional-dependencies"]["dev"]
    assert any(_name(r) == "kaleido" for r in declared["dev"])


def test_tensorboard_is_the_track_extra_and_dev_installs_it():
    declared = _declared()
    assert not any(_name(r) == "tensorboard" for r in declared["core"])
    assert any(_name(r) == "tensorboard" for r in declared["track"])
    assert "mlcwb[track]" in _meta()["project"]["optional-dependencies"]["dev"]


def test_openai_is_the_judge_extra_and_dev_installs_it():
    declared = _declared()
    assert not any(_name(r) == "openai" for r in declared["core"])
    assert any(_name(r) == "openai" for r in declared["judge"])
    assert "mlcwb[judge]" in _meta()["project"]["optional-dependencies"]["dev"]


# ------------------------------------------------------------------ imports vs declarations

def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> tuple[bool, bool, bool]:
    """(inside a function, under ``try/except ImportError``, under ``if TYPE_CHECKING``)."""
    lazy = probe = typing_only = False
    while node in parents:
        node = parents[node]
        lazy |= isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(node, ast.Try):
            caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            probe |= bool(caught & {"ImportError", "ModuleNotFoundError"})
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only = True
    return lazy, probe, typing_only


def _third_party_imports() -> list[tuple[str, str, str]]:
    """(module file, top-level import name, kind) with kind ``top``, ``lazy`` or ``probe``."""
    found = []
    for path in sorted((ROOT / "mlcwb").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            lazy, probe, typing_only = _guarded(node, parents)
            for top in {n.split(".")[0] for n in names}:
                if top in sys.stdlib_module_names or top == "mlcwb" or typing_only:
                    continue
                kind = "probe" if probe else "lazy" if lazy else "top"
                found.append((str(path.relative_to(ROOT)), top, kind))
    return found


def test_the_import_scan_sees_the_known_imports():
    seen = {(name, kind) for _, name, kind in _third_party_imports()}
    assert {("torch", "top"), ("yaml", "top"), ("scipy", "lazy"), ("kaleido", "probe")} <= seen


def test_every_third_party_import_is_declared():
    """Each imported distribution is in pyproject.toml: core where a module imports it at load time
    (importing mlcwb.X must not fail after ``pip install mlcwb``), core or an extra where a function
    imports it; EXTRA_OF names the extra an optional distribution belongs to."""
    dists = importlib.metadata.packages_distributions()
    declared = {group: {_name(r) for r in reqs} for group, reqs in _declared().items()}
    everywhere = set().union(*declared.values())
    problems = []
    for module, top, kind in _third_party_imports():
        if kind == "probe" and top in UNDECLARED_PROBES:
            continue
        names = {_name(d) for d in dists.get(top, [])}
        if not names:
            problems.append(f"{module}: {top} is not installed here, so its distribution is unknown")
            continue
        extra = next((EXTRA_OF[n] for n in names if n in EXTRA_OF), None)
        if extra is not None:
            if not names & declared.get(extra, set()):
                problems.append(f"{module}: {top} belongs in the [{extra}] extra")
            if kind == "top" and not module.endswith("trl_bridge.py"):
                problems.append(f"{module}: imports optional {top} at load time")
        elif kind == "top" and not names & declared["core"]:
            problems.append(f"{module}: {top} ({', '.join(sorted(names))}) is imported at load time "
                            f"but is not a core dependency")
        elif not names & everywhere:
            problems.append(f"{module}: {top} ({', '.join(sorted(names))}) is not declared")
    assert problems == [], "\n".join(problems)


def test_nothing_is_declared_that_nothing_imports_or_runs():
    """A dependency must be imported by mlcwb, or be needed to run its notebooks and tests."""
    imported = set()
    dists = importlib.metadata.packages_distributions()
    for _, top, _ in _third_party_imports():
        imported |= {_name(d) for d in dists.get(top, [])}
    runtime = {"jupyterlab", "ipykernel", "anywidget",  # the notebooks and the explorer widget
               "trl", "pytest", "hypothesis", "playwright",  # trl_bridge's trainers; the tests
               "tensorboard"}  # report_to's tracker: accelerate imports it, mlcwb.tracking looks it up
    unused = sorted(set(_pyproject()) - imported - runtime)
    assert unused == [], f"declared but never imported: {unused}"



def test_packages_listed_for_setuptools_are_every_package_under_mlcwb():
    """The packages are listed (to map data/ and notebooks/ into the wheel), so a new subpackage
    must be added by hand; this says so instead of shipping a wheel without it."""
    listed = _meta()["tool"]["setuptools"]["packages"]
    code = {".".join(p.relative_to(ROOT).parent.parts) for p in (ROOT / "mlcwb").rglob("__init__.py")}
    assert sorted(code - set(listed)) == [], "add these to [tool.setuptools] packages"
    mapped = _meta()["tool"]["setuptools"]["package-dir"]
    assert all((ROOT / folder).is_dir() for folder in mapped.values())


# ------------------------------------------------------------------ the wheel, outside the checkout

BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "mlcwb", "data", "notebooks")


def _build_wheel(tmp: Path) -> Path:
    """Build from a copy of the build's inputs, so no build/ or egg-info lands in the checkout and
    no stale build/lib can leak into the wheel."""
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        else:
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("mlcwb-*.whl")
    return wheel


CHECK_INSTALLED = """
import json, mlcwb, mlcwb.paths
from mlcwb.data import load_corpus
from mlcwb.notebooks import notebook_paths
from mlcwb.presets import load_preset, preset_names
corpus = load_corpus()
print(json.dumps({"package": mlcwb.__file__, "root": str(mlcwb.paths.repo_root()),
                  "prompts": len(corpus), "languages": corpus.languages,
                  "notebooks": [p.name for p in notebook_paths()],
                  "presets": {name: load_preset(name).model for name in preset_names()}}))
"""


def test_a_wheel_install_finds_the_corpus_and_copies_the_notebooks_out(tmp_path):
    wheel = _build_wheel(tmp_path)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                    "--target", str(site), str(wheel)], check=True, capture_output=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = {"cwd": outside, "env": env, "capture_output": True, "text": True}

    proc = subprocess.run([sys.executable, "-c", CHECK_INSTALLED], **run)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.splitlines()[-1])
    assert Path(found["package"]).is_relative_to(site), "imported the checkout, not the wheel"
    assert Path(found["root"]) == site / "mlcwb" / "_resources"
    from mlcwb.data import load_corpus

    checkout = load_corpus()
    assert found["prompts"] == len(checkout) and found["languages"] == checkout.languages
    assert len(found["notebooks"]) == 6 and found["notebooks"][0].startswith("00_")
    from mlcwb.presets import load_preset, preset_names

    assert found["presets"] == {name: load_preset(name).model for name in preset_names()}

    script = site / "bin" / "mlcwb"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "mlcwb.cli"]
    proc = subprocess.run([*command, "notebooks", "copies"], **run)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (outside / "copies").glob("*.ipynb")) == found["notebooks"]
    proc = subprocess.run([*command, "notebooks", "copies"], **run)
    assert proc.returncode == 2 and "--force" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([*command, "presets", "tiny"], **run)
    assert proc.returncode == 0 and proc.stdout.startswith("# ") and "name: tiny" in proc.stdout


# ------------------------------------------------------------------ CI: the notebooks workflow

def _workflow() -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / "notebooks.yml").read_text())


def _step(steps: list[dict], needle: str) -> int:
    """Index of the one step whose ``uses`` or ``run`` contains ``needle``."""
    found = [i for i, s in enumerate(steps) if needle in s.get("uses", "") + s.get("run", "")]
    assert len(found) == 1, f"expected one step with {needle!r}, found {len(found)}"
    return found[0]


def test_notebooks_workflow_runs_the_tiny_series_and_keeps_the_notebooks():
    workflow = _workflow()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    assert set(workflow["jobs"]) == {"notebooks"}
    job = workflow["jobs"]["notebooks"]
    assert job["runs-on"].startswith("ubuntu") and job["timeout-minutes"] <= 90
    steps = job["steps"]

    checkout, setup = _step(steps, "actions/checkout@"), _step(steps, "actions/setup-python@")
    floor = _meta()["project"]["requires-python"].removeprefix(">=")
    assert str(steps[setup]["with"]["python-version"]) == floor

    makefile_torch = re.search(r"^TORCH_SPEC \?= (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    torch = _step(steps, makefile_torch)
    assert "/whl/cpu" in steps[torch]["run"], "the CPU build of the Makefile's torch"
    install = _step(steps, ".[dev]")
    reproduce = _step(steps, "mlcwb reproduce --preset tiny --out runs/tiny")
    upload = _step(steps, "actions/upload-artifact@")
    assert checkout < setup < torch < install < reproduce < upload
    assert steps[upload]["with"]["path"].rstrip("/") == "runs/tiny/notebooks"
    assert steps[upload]["if"] == "always()", "keep the notebooks of a failed run too"
