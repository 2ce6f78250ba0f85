"""environment.yml and pyproject.toml pin the same packages at the same versions."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return reqs


def environment_pins():
    lines = (ROOT / "environment.yml").read_text().splitlines()
    pins = []
    for line in lines:
        m = re.match(r"^\s+-\s+([A-Za-z0-9_.\-]+==\S+)\s*$", line)
        if m:
            pins.append(m.group(1))
    return pins


def test_every_dependency_is_pinned_exactly():
    for req in pyproject_pins():
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.+]*", req), f"not an exact pin: {req}"


def test_environment_yml_matches_pyproject():
    assert sorted(set(pyproject_pins())) == sorted(set(environment_pins()))   # extras may share pins


def test_torch_and_torchvision_pinned_as_a_pair():
    pins = dict(p.split("==") for p in pyproject_pins())
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
