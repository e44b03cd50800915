"""The AsyncAPI document: generated from the code (no drift), valid AsyncAPI 3.0, complete."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from typer.testing import CliRunner

from ehb.commands import asyncapi
from ehb.commands.cli import app
from ehb.privacy import PERSONAL_FIELDS
from schemas.catalog import SUBJECTS, load_catalog
from schemas.topics import TopicSpec, topic_specs

DATA = Path(__file__).resolve().parents[1] / "data"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    # the official schema (npm @asyncapi/specs 6.11.1, schemas/3.0.0.json; see data/README.md)
    schema = json.loads((DATA / "asyncapi-3.0.0.schema.json").read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "asyncapi.yaml").read_text(encoding="utf-8"))


def test_committed_document_is_the_generated_one() -> None:
    diff = asyncapi.check(ROOT / "asyncapi.yaml")
    assert not diff, (
        "asyncapi.yaml drifted from the schemas/settings: run `ehb asyncapi` and "
        "commit it\n" + "\n".join(diff[:80])
    )


def test_document_is_valid_asyncapi_3(
    validator: Draft7Validator, committed: dict[str, Any]
) -> None:
    errors = sorted(validator.iter_errors(committed), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:200]}" for e in errors[:10])


def test_validator_rejects_a_broken_document(validator: Draft7Validator) -> None:
    """The official schema really is applied (not a vacuous pass)."""
    document = asyncapi.build_document()
    document["operations"]["sendHealthBook"]["action"] = "publish"  # AsyncAPI 2 wording
    assert list(validator.iter_errors(document))
    document = asyncapi.build_document()
    document["channels"]["health-book"]["bindings"]["kafka"]["partitions"] = 0
    assert list(validator.iter_errors(document))


def test_every_topic_is_described_with_key_payload_partitions_retention() -> None:
    document = asyncapi.build_document()
    settings = asyncapi.documented_settings()
    channels = document["channels"]
    for spec in topic_specs(settings):
        channel = channels[spec.name]
        assert channel["address"] == "{topicPrefix}" + spec.name
        assert channel["bindings"]["kafka"]["partitions"] == spec.partitions
        assert channel["x-key"] == spec.key
        if "retention.ms" in spec.config:
            topic_config = channel["bindings"]["kafka"]["topicConfiguration"]
            assert topic_config["retention.ms"] == int(spec.config["retention.ms"])
        for message in channel["messages"].values():
            assert "key" in message["bindings"]["kafka"]
    # the Faust changelog too
    changelog = channels["worker-citizens-changelog"]
    assert changelog["address"] == "{workerGroup}-citizens-changelog"
    assert changelog["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"] == ["compact"]
    # every operation points at an existing channel and its messages
    for operation in document["operations"].values():
        channel_key = operation["channel"]["$ref"].rsplit("/", 1)[-1]
        assert channel_key in channels
        for ref in operation["messages"]:
            name = ref["$ref"].rsplit("/", 1)[-1]
            assert name in channels[channel_key]["messages"]


def test_avro_payloads_reference_existing_avsc_files() -> None:
    document = asyncapi.build_document()
    catalog = load_catalog()
    seen = set()
    for channel in document["channels"].values():
        for message in channel["messages"].values():
            payload = message["payload"]
            if "schemaFormat" not in payload:
                continue
            assert payload["schemaFormat"] == asyncapi.AVRO_SCHEMA_FORMAT
            path = ROOT / payload["schema"]["$ref"]
            assert path.is_file(), path
            subject = message["x-schema-subject"]
            assert json.loads(path.read_text(encoding="utf-8")) == catalog.latest(subject).raw
            seen.add(subject)
    assert {
        SUBJECTS.EXAMINATION_EVENT,
        SUBJECTS.EXAMINATION_BATCH,
        SUBJECTS.HEALTH_BOOK_RECORD,
        SUBJECTS.REFERRAL_RECORD,
        SUBJECTS.APPOINTMENT_RECORD,
        SUBJECTS.DEAD_LETTER,
        SUBJECTS.VALIDATED_BATCH,
    } <= seen


def test_personal_data_is_marked() -> None:
    document = asyncapi.build_document()
    channels = document["channels"]
    health_book = channels["health-book"]["messages"]["HealthBookRecord"]
    assert {"ho_ten", "so_cccd", "ma_the_bhyt", "ngay_sinh"} <= set(health_book["x-personal-data"])
    assert "`so_cccd`" in health_book["description"]
    batch = channels["examinations"]["messages"]["ExaminationBatch"]
    assert "events[].so_cccd" in batch["x-personal-data"]
    assert "items[].event.ho_ten" in channels["examinations-by-citizen"]["x-personal-data"]
    for pseudonymous in ("referrals", "appointments"):
        assert channels[pseudonymous]["x-personal-data"] == []
    assert channels["dead-letter"]["x-personal-data-embedded"] == ["original"]
    # every path names a field of PERSONAL_FIELDS
    for channel in channels.values():
        for path in channel["x-personal-data"]:
            assert path.rsplit(".", 1)[-1] in PERSONAL_FIELDS


def test_a_new_topic_appears_without_touching_the_generator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another engineer adds a topic to topic_specs: the document describes it."""
    original = topic_specs

    def with_new_topic(settings: Any) -> list[TopicSpec]:
        specs = original(settings)
        return [
            *specs,
            replace(
                specs[-1],
                name="facility-audit",
                value="DeadLetter",
                description="Input: an audit trail.",
            ),
        ]

    monkeypatch.setattr(asyncapi, "topic_specs", with_new_topic)
    document = asyncapi.build_document()
    channel = document["channels"]["facility-audit"]
    assert channel["address"] == "{topicPrefix}facility-audit"
    assert "DeadLetter" in channel["messages"]
    assert document["operations"]["receiveFacilityAudit"]["action"] == "receive"


def test_personal_paths_follow_named_references() -> None:
    catalog = load_catalog()
    paths = asyncapi.personal_paths(catalog.latest(SUBJECTS.VALIDATED_BATCH), catalog)
    assert "items[].event.so_cccd" in paths


def test_cli_check_and_write(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "asyncapi.yaml"
    result = runner.invoke(app, ["asyncapi", "--check", "--output", str(target)])
    assert result.exit_code == 1
    result = runner.invoke(app, ["asyncapi", "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text(encoding="utf-8") == asyncapi.render()
    result = runner.invoke(app, ["asyncapi", "--check", "--output", str(target)])
    assert result.exit_code == 0, result.output
    target.write_text(
        target.read_text(encoding="utf-8").replace("partitions: 8", "partitions: 9"), "utf-8"
    )
    result = runner.invoke(app, ["asyncapi", "--check", "--output", str(target)])
    assert result.exit_code == 1
    assert "partitions: 9" in result.output
