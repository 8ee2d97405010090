"""One matched dependency set: conda users get the same pins as `make setup`."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _requirements(name: str) -> set[str]:
    out: set[str] = set()
    for line in (REPO / "requirements" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            out |= _requirements(line[3:].strip())
        else:
            out.add(line)
    return out


def test_environment_yml_matches_cpu_requirements() -> None:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip) == _requirements("cpu.txt")


def test_cpu_and_gpu_sets_differ_only_in_fbgemm() -> None:
    cpu, gpu = _requirements("cpu.txt"), _requirements("gpu.txt")
    assert cpu - gpu == {"fbgemm-gpu-cpu==1.8.0"}
    assert gpu - cpu == {"fbgemm-gpu==1.8.0"}


def test_makefile_installs_torchrec_without_its_cuda_dependency() -> None:
    makefile = (REPO / "Makefile").read_text()
    installer = re.search(r"^UV_INSTALL := (.*)$", makefile, re.M)
    assert installer
    assert "pip install" in installer.group(1)
    assert re.search(r"\$\(UV_INSTALL\) --no-deps torchrec==1\.8\.0", makefile)
    assert "torch==2.13.0" in _requirements("cpu.txt")
