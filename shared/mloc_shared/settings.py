"""Settings loading shared by every MLOC process: flags > ``MLOC_*`` variables > YAML file > defaults.

Each side declares one settings class (``CoordinatorSettings``, ``AgentSettings``,
``ClientSettings``); the process builds it once and passes it down. Nothing else reads os.environ.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from mloc_shared.errors import ValidationFailed

S = TypeVar("S", bound="MlocSettings")
CONFIG_ENV = "MLOC_CONFIG"


class MlocSettings(BaseSettings):
    """Base: every field can be set as ``MLOC_<FIELD>`` or as ``field:`` in the YAML file."""

    model_config = SettingsConfigDict(env_prefix="MLOC_", extra="ignore", case_sensitive=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ValidationFailed(f"cannot read config file {path}: {exc.strerror}", field="config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ValidationFailed(f"config file {path} is not valid YAML", field="config", line=line) from None
    if not isinstance(data, dict):
        raise ValidationFailed(f"config file {path} must be a mapping of settings", field="config")
    # accept both `port: 8000` and `MLOC_PORT: 8000` spellings
    return {str(k).lower().removeprefix("mloc_"): v for k, v in data.items()}


def load_settings(cls: type[S], config_file: str | Path | None = None, **flags: Any) -> S:
    """Build ``cls`` from flags (None = not given), the environment and an optional YAML file."""
    path = config_file or os.environ.get(CONFIG_ENV)
    file_values = _read_yaml(Path(path)) if path else {}

    class _Layered(cls):  # type: ignore[valid-type, misc]
        @classmethod
        def settings_customise_sources(
            cls_,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=file_values))

    _Layered.__name__ = cls.__name__
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return _Layered(**given)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ValidationFailed(
            f"setting {field} (MLOC_{field.upper()}): {err['msg']}", field=field
        ) from None


def parse_labels(value: Any) -> dict[str, str]:
    """``k=v,k=v`` (the MLOC_AGENT_LABELS form) or a mapping -> dict."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    labels: dict[str, str] = {}
    for part in str(value).split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, val = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"label {part!r} must look like key=value")
        labels[key.strip()] = val.strip()
    return labels


class ClientSettings(MlocSettings):
    """What the CLI needs to reach a coordinator."""

    coordinator_url: str = "http://127.0.0.1:8000"
    token: str | None = None
    ca_bundle: str | None = None
    data_dir: Path = Path.home() / ".mloc" / "coordinator"  # the coordinator's: where its admin.token is

    def api_token(self) -> str | None:
        """MLOC_TOKEN; without it, on the coordinator's own host, the admin token the coordinator wrote to
        ``<data_dir>/admin.token`` (loopback no longer makes a caller an admin). Sent only to a
        coordinator on loopback, so the CLI never carries the admin token off the host."""
        if self.token:
            return self.token
        if not is_loopback_url(self.coordinator_url):
            return None
        try:
            return (self.data_dir / "admin.token").read_text().strip() or None
        except (OSError, UnicodeDecodeError):  # not this host's coordinator, or not ours to read
            return None


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
