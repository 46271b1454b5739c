"""pyproject.toml and environment.yml name the same packages, so conda and pip users agree."""

from __future__ import annotations

import re
import tomllib

import yaml

from mlcwb.paths import repo_root

CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict[str, str]:
    meta = tomllib.loads((repo_root() / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + [r for extra in meta["optional-dependencies"].values() for r in extra]
    return {_name(r): r.replace(" ", "") for r in reqs}


def _environment() -> dict[str, str]:
    env = yaml.safe_load((repo_root() / "environment.yml").read_text())
    found: dict[str, str] = {}
    for dep in env["dependencies"]:
        for req in dep["pip"] if isinstance(dep, dict) else [dep]:
            if req.startswith("-e") or _name(req) in {"python", "pip"}:
                continue
            name = CONDA_NAMES.get(_name(req), _name(req))
            found[name] = name + req.replace(" ", "")[len(_name(req)):]
    return found


def test_environment_yml_matches_pyproject():
    py, conda = _pyproject(), _environment()
    assert sorted(set(py) - set(conda)) == [], "in pyproject.toml but not environment.yml"
    assert sorted(set(conda) - set(py)) == [], "in environment.yml but not pyproject.toml"
    assert {n: conda[n] for n in py} == py, "version bounds differ"


def test_torch_is_not_pinned_to_a_cpu_build():
    torch_req = _pyproject()["torch"]
    assert "==" not in torch_req and "+cpu" not in torch_req
