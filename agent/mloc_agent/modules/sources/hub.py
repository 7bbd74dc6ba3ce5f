"""The Hugging Face Hub, asked once before a model or dataset is loaded from it.

When a file is not in the cache, huggingface_hub retries a HEAD that failed for network reasons
five times with backoff (1+2+4+8+8 s), for each file: an agent without network spent about 50 s
before transformers raised an OSError. One metadata call without retries answers in a second.
If the hub does not answer and the repo is in the agent's cache, the process goes offline so the
libraries load from the cache at once; if it is not cached, the task fails with the fix.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any, Literal

from mloc_agent.modules.errors import (
    HUB_MODEL_FIX,
    HubAccessDenied,
    HubUnreachable,
    ModelSourceError,
    TransientError,
)
from mloc_agent.modules.sources.path_policy import PathPolicy, is_path_like

RepoType = Literal["model", "dataset"]
PROBE_TIMEOUT_S = 10.0
HUB_DATASET_FIX = ("put the data on the agent (dataset.path) or give the agent network access to the Hub, and "
                   "HF_TOKEN for gated datasets")
_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_NETWORK_MODULES = {"httpx", "httpx2", "requests", "urllib3", "aiohttp"}
_NETWORK_WORDS = ("Connect", "Timeout", "Network", "Proxy", "Protocol")
MIRRORED_VARIABLE = "MLOC_MIRRORED"  # mloc_shared.mirror.ENV_VARIABLE (this module imports no mloc_shared)


def looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and not name.startswith((".", "-"))


def is_network_error(exc: BaseException) -> bool:
    """No answer came (DNS, refused, timed out), whichever HTTP library the hub client uses."""
    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    root = type(exc).__module__.split(".")[0]
    return root in _NETWORK_MODULES and any(word in type(exc).__name__ for word in _NETWORK_WORDS)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _mirrored_folders() -> dict[str, str]:
    try:
        folders = json.loads(os.environ.get(MIRRORED_VARIABLE) or "{}")
    except ValueError:
        return {}
    return {k: v for k, v in folders.items() if isinstance(v, str)} if isinstance(folders, dict) else {}


def mirrored(repo_id: str, repo_type: RepoType) -> str | None:
    """The folder the agent put the mirrored copy of ``repo_id`` in for this task (agent/mirror.py), if any:
    the spec keeps its hub id and the task loads the copy, without asking the hub."""
    folder = _mirrored_folders().get(f"{repo_type}:{repo_id}")
    return folder if folder is not None and Path(folder).is_dir() else None


def name_mirrored_base(adapter_config: Path) -> None:
    """An adapter trained on a mirrored copy names the hub id as its base, as it would have without the
    mirror (the copy's folder is this agent's alone; a user or another agent loads the hub id)."""
    folders = _mirrored_folders()
    try:
        config = json.loads(adapter_config.read_text()) if folders else None
    except (OSError, ValueError):
        return
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str):
        return
    for key, folder in folders.items():
        if key.startswith("model:") and os.path.realpath(base) == os.path.realpath(folder):
            config["base_model_name_or_path"] = key.removeprefix("model:")
            adapter_config.write_text(json.dumps(config, indent=2))
            return


def is_cached(repo_id: str, repo_type: RepoType) -> bool:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type) / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def go_offline() -> None:
    """Load from the cache from now on, in this task process (the libraries read these flags per call)."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]


def check_repo(repo_id: str, *, repo_type: RepoType = "model", revision: str | None = None,
               field: str = "model.source") -> None:
    """Raise, in about a second and with the fix, if ``repo_id`` cannot be loaded from the hub or the cache."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    fix = HUB_MODEL_FIX if repo_type == "model" else HUB_DATASET_FIX
    if mirrored(repo_id, repo_type) is not None:
        return
    if constants.is_offline_mode():
        if is_cached(repo_id, repo_type):
            return
        raise HubUnreachable(f"{field}: {repo_id} is not in this agent's Hugging Face cache and HF_HUB_OFFLINE is "
                             f"set; {fix}")
    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision, timeout=PROBE_TIMEOUT_S)
    except GatedRepoError:
        raise HubAccessDenied(f"{field}: {repo_id} is gated on the Hugging Face Hub; accept its terms there and give "
                              "the agent an HF_TOKEN with access") from None
    except RevisionNotFoundError:
        raise ModelSourceError(f"{field}: {repo_id} has no revision {revision!r} on the Hugging Face Hub") from None
    except RepositoryNotFoundError:
        raise ModelSourceError(f"{field}: {repo_id} is not on the Hugging Face Hub (a private repo needs HF_TOKEN "
                               "on the agent)") from None
    except HfHubHTTPError as exc:
        if is_cached(repo_id, repo_type):
            go_offline()
            return
        status = exc.response.status_code if exc.response is not None else "?"
        raise TransientError(f"{field}: the Hugging Face Hub answered HTTP {status} for {repo_id}; try again "
                             "later") from exc
    except Exception as exc:
        if not is_network_error(exc):
            raise
        if is_cached(repo_id, repo_type):
            go_offline()
            return
        raise HubUnreachable(f"{field}: the agent cannot reach the Hugging Face Hub ({_endpoint()}) to fetch "
                             f"{repo_id}; {fix}") from exc


def model_name(identifier: str, revision: str | None = None, *, paths: PathPolicy, field: str = "model.source") -> str:
    """What ``from_pretrained`` opens for a name: a path (absolute, ``~`` or ``.``) once the agent's path
    policy allows it, a hub id once the hub or the cache has it."""
    if is_path_like(identifier):
        path = paths.check(identifier, field)
        if not path.exists():
            raise ModelSourceError(f"{field}: {identifier} does not exist on agent {socket.gethostname()}")
        return str(path)
    if not looks_like_repo_id(identifier):
        raise ModelSourceError(f"{field}: {identifier} does not exist on agent {socket.gethostname()} and is not a "
                               "Hugging Face Hub id")
    folder = mirrored(identifier, "model")
    if folder is not None:
        return folder
    check_repo(identifier, revision=revision, field=field)
    return identifier


def load_dataset(name: str, subset: str | None, split: str, revision: str | None = None) -> Any:
    """``datasets.load_dataset`` for ``dataset.hub``, checked first (its own retries take half a minute)."""
    from datasets import load_dataset as hub_load

    folder = mirrored(name, "dataset")
    if folder is not None:  # a local folder of the repo's files: datasets reads them without the hub
        return hub_load(folder, subset, split=split)
    check_repo(name, repo_type="dataset", revision=revision, field="dataset.hub")
    return hub_load(name, subset, split=split, revision=revision)
