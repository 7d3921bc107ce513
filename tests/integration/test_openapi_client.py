"""A client generated from the API's own OpenAPI document (datamodel-code-generator's
Pydantic models), used for one round trip against a real API process, worker and simulator:
what a service in another language does with its own generator."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from quorum.producer.stack import ManagedProcess
from tests.integration.helpers import APPLES, Purchase, directive
from tests.integration.services import http, start_api

pytestmark = pytest.mark.integration

TOKEN = "generated-client-token"


@pytest.fixture(scope="module")
def api(redis_url: str, worker: ManagedProcess) -> Iterator[str]:
    url, process = start_api({"QUORUM_REDIS_URL": redis_url, "QUORUM_API_TOKEN": TOKEN})
    try:
        yield url
    finally:
        process.stop()


def generated_models(api: str, folder: Path) -> ModuleType:
    """The models datamodel-code-generator writes from the served document, imported."""
    document = folder / "openapi.json"
    document.write_text(http("GET", f"{api}/openapi.json", token=TOKEN).text)
    module = folder / "quorum_api_models.py"
    codegen = Path(sys.executable).with_name("datamodel-codegen")
    subprocess.run(
        [
            str(codegen),
            *("--input", str(document), "--input-file-type", "openapi"),
            *("--output-model-type", "pydantic_v2.BaseModel", "--output", str(module)),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    spec = importlib.util.spec_from_file_location("quorum_api_models", module)
    assert spec is not None and spec.loader is not None
    models = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = models  # its models resolve their forward references here
    spec.loader.exec_module(models)
    return models


def test_a_generated_client_submits_a_run_and_reads_its_typed_result(api, scope, tmp_path):
    models = generated_models(api, tmp_path)
    config = models.ThresholdVotingValidationConfig(
        mode="threshold", issues=["names a product"], count=3
    )
    request = models.RunRequest.model_validate(
        {
            "template": "Extract the purchase from: I want 5 apples {{ sim }}",
            "kwargs": {"sim": directive(scope, outputs=[APPLES], votes={"*": True})},
            "response_schema": Purchase.model_json_schema(),
            "config": config.model_dump(exclude_none=True),
        }
    )
    body = request.model_dump(mode="json", exclude_none=True)
    created = models.RunCreated.model_validate(
        http("POST", f"{api}/v1/runs", body, token=TOKEN).json()
    )
    assert created.status.value in {"PENDING", "RUNNING", "VALIDATING"}

    answer = http("GET", f"{api}/v1/runs/{created.id}/result?timeout=30", token=TOKEN)
    view = models.RunView.model_validate(answer.json())
    assert answer.status == 200
    assert view.status.value == "SUCCESSFUL"
    assert view.result == APPLES
    assert view.usage.total_tokens > 0
