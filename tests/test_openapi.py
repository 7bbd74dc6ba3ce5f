"""The served OpenAPI document is valid OpenAPI 3.1 and lists exactly the routes the coordinator serves."""

from __future__ import annotations

import re

from mloc_server.api.openapi import OPENAPI_PATH, route_keys
from mloc_server.app import create_app
from mloc_server.settings import CoordinatorSettings
from openapi_spec_validator import validate

from tests.harness import Coordinator


def _operations(doc: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}


def test_document_is_valid_openapi_31_and_matches_every_route(coordinator: Coordinator, tmp_path) -> None:
    resp = coordinator.http.get(OPENAPI_PATH, headers={"Authorization": ""})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert doc["openapi"] == "3.1.0"
    validate(doc)
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', resp.text))
    assert refs and refs <= set(doc["components"]["schemas"]), refs - set(doc["components"]["schemas"])
    served = route_keys(create_app(CoordinatorSettings(data_dir=tmp_path)))
    documented = _operations(doc)
    assert served - documented == set(), "routes missing from api/openapi.py OPERATIONS"
    assert documented - served == set(), "documented operations the app does not serve"


def test_every_operation_documents_its_errors_as_the_json_envelope(coordinator: Coordinator) -> None:
    doc = coordinator.http.get(OPENAPI_PATH).json()
    envelope = {"$ref": "#/components/schemas/ErrorEnvelope"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "503" in op["responses"], (method, path)
            for status, answer in op["responses"].items():
                if int(status) >= 400 and (path, status) != ("/health", "503"):
                    assert answer["content"]["application/json"]["schema"] == envelope, (method, path, status)
            if "requestBody" in op:
                assert {"400", "413", "422"} <= set(op["responses"]), (method, path)
            if path.startswith(("/api/v1/leases/", "/api/v1/agents/poll", "/api/v1/agents/register")):
                assert any(p["name"] == "X-MLOC-Protocol" and p["required"] for p in op["parameters"]), path
