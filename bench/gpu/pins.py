"""The wheels that travel to the GPU machine, and why each is needed.

The GPU machine has Python 3.12 with torch 2.11, transformers 5.17, peft, accelerate, aiohttp,
httpx, nvidia-ml-py and pyyaml, and no network. The rest of what MLOC's three packages and the sft
module import travels with the working tree (64 MiB in all). What the kit asks pip for is what the
three pyproject.toml files declare (so the kit follows the project's pins). A pinned wheel is used
only where the machine has nothing that satisfies a requirement: the venv sees the machine's
packages (bootstrap.py).

Standard library only, plus ``packaging`` for the checks (it comes with transformers and pip).
"""

from __future__ import annotations

import tomllib
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Pin:
    """One wheel that travels, why it is needed and, for large ones, what is cut from it."""

    name: str
    version: str
    why: str
    drop: tuple[str, ...] = ()  # fnmatch patterns of archive members the kit does not use

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


_SOURCES = ("*.pyx", "*.pxd", "*.pxi", "*.h", "*.hpp", "*.cc", "*.cpp")
# Versions: those the project's own venv runs its tests with, except where the GPU machine sets the
# bound (huggingface-hub < 2 for its peft and tokenizers; fsspec at datasets' cap).
PINS: tuple[Pin, ...] = (
    # the sft module, through TRL
    Pin("transformers", "5.24.0", "the sft module passes TrainingArguments(activation_checkpointing=...), which "
        "5.17 lacks (the agent pins >=5.20); the venv shadows the machine's 5.17"),
    Pin("trl", "1.16.0", "SFTTrainer; the agent pins >=1.16; it declares transformers >=4.56.2"),
    Pin("datasets", "5.2.0", "TRL's and the sft module's data path"),
    Pin("huggingface-hub", "1.33.0", "transformers 5.24 and datasets 5.2 need >=1.31; <2 as the machine's peft"),
    Pin("pyarrow", "26.0.1", "datasets' storage", drop=(
        "pyarrow/tests/*", "pyarrow/include/*", "pyarrow/src/*", *(f"pyarrow/{p}" for p in _SOURCES),
        "pyarrow/*flight*", "pyarrow/libarrow_s3.so*", "pyarrow/_s3fs.*", "pyarrow/_gcsfs.*", "pyarrow/_azurefs.*",
        "pyarrow/_hdfs.*", "pyarrow/_pyarrow_cpp_tests.*",
        # copies of one library (a zip holds no symlinks); the extensions load the .so.NNNN name
        "pyarrow/libarrow_python.so", "pyarrow/libarrow_python.so.*.*.*",
        "pyarrow/libarrow_python_parquet_encryption.so", "pyarrow/libarrow_python_parquet_encryption.so.*.*.*",
    )),
    Pin("pandas", "3.1.1", "datasets and TRL import it", drop=(
        "pandas/tests/*", *(f"pandas/{p}" for p in _SOURCES), *(f"pandas/*/{p}" for p in _SOURCES))),
    Pin("python-dateutil", "2.9.0.post0", "pandas"),
    Pin("six", "1.17.0", "python-dateutil"),
    Pin("dill", "0.4.1", "datasets (5.2 wants <0.4.2)"),
    Pin("multiprocess", "0.70.19", "datasets (5.2 wants <0.70.20)"),
    Pin("xxhash", "4.1.0", "datasets' fingerprints"),
    Pin("fsspec", "2026.9.0", "datasets caps fsspec at 2026.9.0; torch's may be newer"),
    # the coordinator
    Pin("sqlmodel", "0.0.50", "the coordinator's store"),
    Pin("sqlalchemy", "2.1.9", "the coordinator's store"),
    Pin("greenlet", "3.5.6", "sqlalchemy[asyncio]"),
    Pin("aiosqlite", "0.22.1", "the coordinator's store"),
    Pin("prometheus-client", "0.26.0", "the coordinator's /metrics"),
    Pin("cryptography", "50.0.2", "task secrets (Fernet)"),
    Pin("cffi", "2.1.1", "cryptography"),
    Pin("pycparser", "3.12", "cffi"),
    # mloc-shared (typer, click, rich and friends usually come with transformers; carried in case)
    Pin("pydantic", "2.14.4", "the wire protocol"),
    Pin("pydantic-core", "2.50.5", "pydantic"),
    Pin("annotated-types", "0.8.0", "pydantic"),
    Pin("typing-inspection", "0.4.5", "pydantic"),
    Pin("typing-extensions", "4.16.0", "pydantic 2.14"),
    Pin("pydantic-settings", "2.16.3", "MLOC_* settings"),
    Pin("python-dotenv", "1.2.4", "pydantic-settings"),
    Pin("typer", "0.29.2", "the mloc CLI"),
    Pin("click", "8.5.1", "typer; huggingface-hub 1.33 wants >=8.4.2"),
    Pin("rich", "15.0.0", "the mloc CLI"),
    Pin("markdown-it-py", "4.3.0", "rich"),
    Pin("mdurl", "0.1.2", "markdown-it-py"),
    Pin("pygments", "2.21.0", "rich"),
    Pin("shellingham", "1.5.4", "typer"),
    Pin("annotated-doc", "0.0.7", "typer"),
    Pin("setuptools", "84.2.1", "builds mloc-shared/-server/-agent from the working tree (no build isolation)"),
)
# QLoRA's kernels: the full wheel holds a library per CUDA release; the CUDA 12.8+ ones are kept
BITSANDBYTES = Pin("bitsandbytes", "0.50.2", "QLoRA (4-bit NF4) on CUDA", drop=(
    "bitsandbytes/libbitsandbytes_cuda11*", "bitsandbytes/libbitsandbytes_cuda12[0-7].so",
    "bitsandbytes/libbitsandbytes_rocm*", "bitsandbytes/libbitsandbytes_xpu*"))

# what the GPU machine brings, at versions only pip can check there
ON_MACHINE = ("torch", "aiohttp", "httpx", "nvidia-ml-py", "pyyaml", "peft", "accelerate", "numpy", "packaging",
              "tokenizers", "safetensors", "regex", "tqdm", "filelock", "jinja2", "psutil", "hf-xet")
# requirements of the three packages that the kit does not carry
NOT_CARRIED = {
    "boto3": "the S3 artifact store only, imported when one is configured; the kit uses the local store",
    "bitsandbytes": "optional, for QLoRA: carried when it fits (bench.gpu.wheels --no-bitsandbytes leaves it out)",
    "mloc-shared": "installed from the working tree",
}
# markers evaluated as on the GPU machine
TARGET = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def project_requirements(repo: Path = REPO) -> list[str]:
    """Requirements of mloc-shared, -server, -agent and the agent's ``train`` extra, as declared."""
    out: list[str] = []
    for part in ("shared", "server", "agent"):
        project = tomllib.loads((repo / part / "pyproject.toml").read_text())["project"]
        out += project.get("dependencies", [])
        if part == "agent":
            out += project.get("optional-dependencies", {}).get("train", [])
    return out


def install_requirements(repo: Path = REPO) -> list[str]:
    """What the kit asks pip for on the GPU machine: the declared requirements, less NOT_CARRIED."""
    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    for text in project_requirements(repo):
        req = Requirement(text)
        name = normal(req.name)
        if name not in NOT_CARRIED and name not in seen:
            seen[name] = f"{name}{req.specifier}"
    return sorted(seen.values())


def constraints_text(pins: tuple[Pin, ...]) -> str:
    return "".join(f"{p.requirement}\n" for p in pins)


def _unmet(requirement: str, carried: dict[str, str], who: str) -> str | None:
    from packaging.requirements import Requirement

    req = Requirement(requirement)
    if req.marker is not None and not req.marker.evaluate(TARGET):
        return None
    name = normal(req.name)
    if name in carried:
        if not req.specifier.contains(carried[name], prereleases=True):
            return f"{who} needs {requirement}; {name}=={carried[name]} is carried"
        return None
    return None if name in ON_MACHINE else f"{who} needs {requirement}: neither carried nor on the GPU machine"


def coverage_problems(repo: Path = REPO, pins: tuple[Pin, ...] = PINS) -> list[str]:
    """Each declared requirement is carried at a version that satisfies it, or brought by the machine."""
    carried = {normal(p.name): p.version for p in pins}
    found = (_unmet(text, carried, "mloc") for text in install_requirements(repo))
    return [p for p in found if p]


def metadata_problems(wheels: dict[str, Path], pins: tuple[Pin, ...]) -> list[str]:
    """Every carried wheel's own requirements (Python 3.12, Linux) are met by the carried set or the
    machine's packages: pip there never needs what is not at hand."""
    carried = {normal(p.name): p.version for p in pins}
    problems = []
    for name, path in sorted(wheels.items()):
        with zipfile.ZipFile(path) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            headers = Parser().parsestr(zf.read(meta).decode())
        found = (_unmet(text, carried, name) for text in headers.get_all("Requires-Dist") or [])
        problems += [p for p in found if p]
    return problems


def find_wheels(folder: Path, pins: tuple[Pin, ...]) -> dict[str, Path]:
    """The wheel file of each pin found in ``folder`` (by normalised name and version)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.whl")) if folder.is_dir() else []:
        dist, version = path.name.split("-")[:2]
        for pin in pins:
            if normal(dist) == normal(pin.name) and version == pin.version:
                found[pin.name] = path
    return found
