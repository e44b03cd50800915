"""`ehb schemas register` and the registry-backed codec, through confluent_kafka's registry
client against a Confluent-REST-compatible stand-in (tests/support/registry_server.py)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from ehb.commands.cli import app
from ehb.settings import Settings
from schemas import SUBJECTS, DecodeError, load_catalog
from schemas.catalog import Catalog
from schemas.codec import wire_header
from schemas.errors import EhbError
from schemas.registry import (
    RegistryError,
    RegistryIds,
    codec_for,
    register_catalog,
    registry_client,
)
from schemas.topics import HEALTH_BOOK
from tests.support import factories as f
from tests.support.registry_server import FakeRegistry, _Version


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    with FakeRegistry() as server:
        yield server


def test_register_every_subject_version_with_backward_transitive(registry: FakeRegistry) -> None:
    catalog = load_catalog()
    result = CliRunner().invoke(app, ["schemas", "register", "--url", registry.url])
    assert result.exit_code == 0, result.output
    assert registry.state.config == {s: "BACKWARD_TRANSITIVE" for s in catalog.subjects}
    registered = {
        (s, v.version) for s, versions in registry.state.subjects.items() for v in versions
    }
    assert registered == {(e.subject, e.version) for e in catalog.entries}
    # compatibility is set before the first version of each subject is registered
    for subject in catalog.subjects:
        config = registry.state.requests.index(f"PUT /config/{subject}")
        first = registry.state.requests.index(f"POST /subjects/{subject}/versions")
        assert config < first
    # idempotent: a second run registers nothing new
    register_catalog(registry_client(registry.url))
    assert len(registry.state.by_id) == len(catalog.entries)
    for subject in catalog.subjects:
        assert len(registry.state.subjects[subject]) == len(catalog.versions(subject))


def test_codec_uses_registry_ids_and_round_trips(registry: FakeRegistry) -> None:
    register_catalog(registry_client(registry.url))
    codec = codec_for(Settings(schema_registry_url=registry.url))
    event = f.exam(1)
    data = codec.encode(SUBJECTS.EXAMINATION_EVENT, event)
    schema_id = int.from_bytes(data[1:5], "big")
    assert schema_id >= 100  # the registry's id, not the catalog's (1)
    decoded = codec.decode(data)
    assert decoded.subject == SUBJECTS.EXAMINATION_EVENT
    assert decoded.record["so_cccd"] == event["so_cccd"]
    # a catalog id means nothing to a registry-backed codec
    catalog_encoded = wire_header(1) + data[5:]
    with pytest.raises(DecodeError) as exc:
        codec.decode(catalog_encoded)
    assert exc.value.reason == "unknown_schema_id"


def test_unknown_id_resolved_through_the_registry(registry: FakeRegistry) -> None:
    register_catalog(registry_client(registry.url))
    codec = codec_for(Settings(schema_registry_url=registry.url))
    data = codec.encode(SUBJECTS.EXAMINATION_EVENT, f.exam(2))
    entry = load_catalog().latest(SUBJECTS.EXAMINATION_EVENT)
    # the same schema under another id (e.g. registered by another deployment's tooling)
    registry.state.by_id[555] = _Version(555, 1, entry.schema_str, [])
    decoded = codec.decode(wire_header(555) + data[5:])
    assert decoded.entry is entry
    with pytest.raises(DecodeError) as exc:
        codec.decode(wire_header(556) + data[5:])
    assert exc.value.reason == "unknown_schema_id"


def test_unregistered_catalog_is_a_clear_error(registry: FakeRegistry) -> None:
    with pytest.raises(RegistryError, match="ehb schemas register"):
        RegistryIds.from_url(registry.url)


def test_unreachable_registry_is_a_clear_error() -> None:
    with pytest.raises(RegistryError):
        codec_for(Settings(schema_registry_url="http://127.0.0.1:9"))


def test_incompatible_new_version_is_refused(registry: FakeRegistry) -> None:
    catalog = load_catalog()
    latest = catalog.latest(SUBJECTS.DEAD_LETTER)
    raw = copy.deepcopy(latest.raw)
    raw["fields"].append({"name": "operator_note", "type": "string"})  # no default
    entries = [dataclasses.replace(e, parsed=None) for e in catalog.entries]
    entries.append(
        dataclasses.replace(latest, id=999, version=latest.version + 1, raw=raw, parsed=None)
    )
    with pytest.raises(RegistryError, match="incompatible|409"):
        register_catalog(registry_client(registry.url), Catalog(entries))


def test_register_without_url_fails_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EHB_SCHEMA_REGISTRY_URL", raising=False)
    result = CliRunner().invoke(app, ["schemas", "register"])
    assert result.exit_code != 0
    assert isinstance(result.exception, EhbError)
    assert "EHB_SCHEMA_REGISTRY_URL" in str(result.exception)


@pytest.mark.integration
def test_pipeline_with_registry_ids(deploy, registry: FakeRegistry) -> None:
    register_catalog(registry_client(registry.url))
    d = deploy(schema_registry_url=registry.url)
    d.codec = codec_for(d.settings)
    d.publish([f.exam(40 + i) for i in range(5)] + [f.exam(50, facility="79999")])
    d.wait_for_events(6)
    assert d.count("health_book_entries") == 5
    assert d.query("SELECT reason FROM dead_letters") == [("facility_unknown",)]
    header_ids = {int.from_bytes(m.value()[1:5], "big") for m in d.read_topic(HEALTH_BOOK)}
    assert header_ids and min(header_ids) >= 100
