"""A Confluent-compatible schema registry as the source of schema ids.

Without ``EHB_SCHEMA_REGISTRY_URL`` the codec uses the fixed ids of ``schemas/catalog.json``.
With it, the catalog stays the source of the schemas themselves and the registry gives their
ids, the way other Confluent clients expect::

    ehb schemas register            # once per registry: every subject/version of the catalog,
                                    # compatibility BACKWARD_TRANSITIVE per subject
    EHB_SCHEMA_REGISTRY_URL=http://registry:8081 ehb worker

:class:`RegistryIds` is the codec's ``registry`` hook: ``id_of(entry)`` gives the registry's id
of a catalog entry (looked up once, at start), ``entry_for_unknown_id(id, catalog)`` maps an id
the codec has not seen to the catalog entry with the same schema. A registry that cannot be
reached raises :class:`RegistryError` instead of turning valid messages into dead letters.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from schemas.catalog import Catalog, SchemaEntry, load_catalog
from schemas.codec import AvroCodec
from schemas.errors import SchemaCatalogError

__all__ = [
    "COMPATIBILITY",
    "RegisteredEntry",
    "RegistryError",
    "RegistryIds",
    "codec_for",
    "register_catalog",
    "registry_client",
]

log = logging.getLogger(__name__)

#: The compatibility rule of every subject (see catalog.json's "compatibility").
COMPATIBILITY = "BACKWARD_TRANSITIVE"


class RegistryError(SchemaCatalogError):
    """The registry is unreachable, refuses a schema, or lacks a schema of the catalog (the
    CLI reports it in one line)."""


@dataclass(frozen=True)
class RegisteredEntry:
    subject: str
    catalog_version: int
    registry_version: int
    schema_id: int


def registry_client(url: str, **conf: Any) -> Any:
    """A ``confluent_kafka`` SchemaRegistryClient (imported lazily: optional at runtime)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient({"url": url, **conf})


def _schema(entry: SchemaEntry, versions: dict[tuple[str, int], int]) -> Any:
    from confluent_kafka.schema_registry import Schema, SchemaReference

    references = [
        SchemaReference(
            ref.name, ref.subject, versions.get((ref.subject, ref.version), ref.version)
        )
        for ref in entry.references
    ]
    return Schema(entry.schema_str, "AVRO", references)


def _ordered(catalog: Catalog) -> list[SchemaEntry]:
    """Entries with the schemas they reference first, each subject's versions in order."""
    done: set[tuple[str, int]] = set()
    ordered: list[SchemaEntry] = []
    pending = sorted(catalog.entries, key=lambda e: (e.id, e.version))
    while pending:
        progressed = False
        for entry in list(pending):
            if all((r.subject, r.version) in done for r in entry.references) and all(
                (entry.subject, v) in done for v in range(1, entry.version)
            ):
                ordered.append(entry)
                done.add((entry.subject, entry.version))
                pending.remove(entry)
                progressed = True
        if not progressed:
            raise SchemaCatalogError("the catalog's references form a cycle")
    return ordered


def _wrap(action: str, call: Callable[[], Any]) -> Any:
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    try:
        return call()
    except SchemaRegistryError as exc:
        raise RegistryError(
            f"{action}: {exc.error_message} (HTTP {exc.http_status_code}, code {exc.error_code})"
        ) from exc
    except Exception as exc:  # connection refused, DNS, TLS ...: one line, no traceback
        raise RegistryError(f"{action}: {type(exc).__name__}: {exc}") from exc


def register_catalog(
    client: Any, catalog: Catalog | None = None, compatibility: str = COMPATIBILITY
) -> list[RegisteredEntry]:
    """Register every subject/version of the catalog, in order; idempotent.

    Compatibility is set per subject *before* its versions are registered, so the registry
    itself checks that each new version can read the data of all previous ones.
    """
    from confluent_kafka.schema_registry import ConfigCompatibilityLevel, ServerConfig

    catalog = catalog or load_catalog()
    level = ConfigCompatibilityLevel(compatibility)
    for subject in catalog.subjects:
        _wrap(
            f"set compatibility of {subject}",
            partial(client.set_config, subject, ServerConfig(compatibility=level)),
        )
    versions: dict[tuple[str, int], int] = {}
    registered: list[RegisteredEntry] = []
    for entry in _ordered(catalog):
        schema = _schema(entry, versions)
        _wrap(
            f"register {entry.subject} v{entry.version}",
            partial(client.register_schema, entry.subject, schema),
        )
        found = _wrap(
            f"look up {entry.subject} v{entry.version}",
            partial(client.lookup_schema, entry.subject, schema),
        )
        versions[(entry.subject, entry.version)] = int(found.version)
        registered.append(
            RegisteredEntry(entry.subject, entry.version, int(found.version), int(found.schema_id))
        )
        log.info("registered %s v%d as id %s", entry.subject, entry.version, found.schema_id)
    return registered


class RegistryIds:
    """Registry ids of the catalog's schemas (the :class:`AvroCodec` ``registry`` hook)."""

    def __init__(self, client: Any, catalog: Catalog | None = None) -> None:
        self.client = client
        self.catalog = catalog or load_catalog()
        self._ids: dict[tuple[str, int], int] = {}
        self._unknown: dict[int, SchemaEntry | None] = {}
        versions: dict[tuple[str, int], int] = {}
        for entry in _ordered(self.catalog):
            schema = _schema(entry, versions)
            found = _wrap(
                f"{entry.subject} v{entry.version} is not in the registry "
                "(run `ehb schemas register`)",
                partial(client.lookup_schema, entry.subject, schema),
            )
            versions[(entry.subject, entry.version)] = int(found.version)
            self._ids[(entry.subject, entry.version)] = int(found.schema_id)

    @classmethod
    def from_url(cls, url: str, catalog: Catalog | None = None, **conf: Any) -> RegistryIds:
        return cls(registry_client(url, **conf), catalog)

    def id_of(self, entry: SchemaEntry) -> int:
        return self._ids[(entry.subject, entry.version)]

    def entry_for_unknown_id(self, schema_id: int, catalog: Catalog) -> SchemaEntry | None:
        """The catalog entry whose schema the registry stores under ``schema_id``, if any."""
        if schema_id in self._unknown:
            return self._unknown[schema_id]
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                self._unknown[schema_id] = None
                return None
            raise RegistryError(f"schema id {schema_id}: {exc.error_message}") from exc
        except Exception as exc:
            raise RegistryError(f"schema id {schema_id}: {type(exc).__name__}: {exc}") from exc
        try:
            raw = json.loads(schema.schema_str)
        except ValueError:
            raw = None
        match = next((e for e in catalog.entries if e.raw == raw), None)
        self._unknown[schema_id] = match
        return match


def codec_for(settings: Any, catalog: Catalog | None = None) -> AvroCodec:
    """The codec the settings ask for: registry ids with ``EHB_SCHEMA_REGISTRY_URL``, else the
    catalog's."""
    url = getattr(settings, "schema_registry_url", None)
    if not url:
        return AvroCodec(catalog)
    catalog = catalog or load_catalog()
    return AvroCodec(catalog, registry=RegistryIds.from_url(url, catalog))
