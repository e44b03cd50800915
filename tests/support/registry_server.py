"""A small in-process stand-in for a Confluent-compatible schema registry (REST API subset).

No registry server is installable here (Confluent's and Karapace's need a JVM or their own
Kafka deployment), so the tests of ``ehb schemas register`` and of the registry-backed codec
talk to this one through the real ``confluent_kafka.schema_registry`` client. It implements
the endpoints that client uses: config per subject, register, look up, get by id, and a
BACKWARD_TRANSITIVE check (fastavro: each new version must read data of every older one).
Ids start at 100, so a test sees the codec use the registry's ids, not the catalog's.
"""

from __future__ import annotations

import io
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

import fastavro
from fastavro.utils import generate_many

__all__ = ["FakeRegistry"]


@dataclass
class _Version:
    id: int
    version: int
    schema: str
    references: list[dict[str, Any]]


@dataclass
class _State:
    subjects: dict[str, list[_Version]] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)
    by_id: dict[int, _Version] = field(default_factory=dict)
    next_id: int = 100
    requests: list[str] = field(default_factory=list)


def _same(a: str, b: str) -> bool:
    return json.loads(a) == json.loads(b)


class FakeRegistry:
    def __init__(self) -> None:
        self.state = _State()
        self.lock = threading.Lock()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")

            def do_GET(self) -> None:  # noqa: N802
                registry.handle(self, "GET", None)

            def do_POST(self) -> None:  # noqa: N802
                registry.handle(self, "POST", self._body())

            def do_PUT(self) -> None:  # noqa: N802
                registry.handle(self, "PUT", self._body())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeRegistry:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the API ----------------------------------------------------------------------------
    def _parsed(self, schema: str, references: list[dict[str, Any]]) -> Any:
        named: dict[str, Any] = {}
        for ref in references:
            version = self.state.subjects[ref["subject"]][int(ref["version"]) - 1]
            self._parsed_into(version, named)
        return fastavro.parse_schema(json.loads(schema), named_schemas=named)

    def _parsed_into(self, version: _Version, named: dict[str, Any]) -> None:
        for ref in version.references:
            self._parsed_into(self.state.subjects[ref["subject"]][int(ref["version"]) - 1], named)
        fastavro.parse_schema(json.loads(version.schema), named_schemas=named)

    def _readable(self, new: Any, old: _Version) -> bool:
        """BACKWARD: the new schema reads a record written with the old one (checked on an
        example record fastavro generates)."""
        writer = self._parsed(old.schema, old.references)
        try:
            record = next(iter(generate_many(writer, 1)))
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, writer, record)
            buf.seek(0)
            fastavro.schemaless_reader(buf, writer, new)
            return True
        except Exception:
            return False

    def handle(self, h: Any, method: str, body: Any) -> None:
        path = urlparse(h.path).path
        s = self.state
        with self.lock:
            s.requests.append(f"{method} {path}")
            if m := re.fullmatch(r"/config/(.+)", path):
                subject = unquote(m.group(1))
                if method == "PUT":
                    s.config[subject] = body["compatibility"]
                    return h._reply(200, {"compatibility": body["compatibility"]})
                return h._reply(200, {"compatibilityLevel": s.config.get(subject, "BACKWARD")})
            if m := re.fullmatch(r"/subjects/(.+)/versions", path):
                subject = unquote(m.group(1))
                versions = s.subjects.setdefault(subject, [])
                refs = body.get("references") or []
                for v in versions:
                    if _same(v.schema, body["schema"]) and v.references == refs:
                        return h._reply(200, {"id": v.id})
                new = self._parsed(body["schema"], refs)
                rule = s.config.get(subject, "BACKWARD")
                older = versions if rule.endswith("TRANSITIVE") else versions[-1:]
                if rule.startswith("BACKWARD") and not all(self._readable(new, v) for v in older):
                    return h._reply(409, {"error_code": 409, "message": "incompatible"})
                existing = next(
                    (
                        v
                        for v in s.by_id.values()
                        if _same(v.schema, body["schema"]) and v.references == refs
                    ),
                    None,
                )
                schema_id = existing.id if existing else s.next_id
                if existing is None:
                    s.next_id += 1
                version = _Version(schema_id, len(versions) + 1, body["schema"], refs)
                versions.append(version)
                s.by_id.setdefault(schema_id, version)
                return h._reply(200, {"id": schema_id})
            if m := re.fullmatch(r"/subjects/([^/]+)", path):
                subject = unquote(m.group(1))
                if subject not in s.subjects:
                    return h._reply(404, {"error_code": 40401, "message": "Subject not found"})
                refs = body.get("references") or []
                for v in s.subjects[subject]:
                    if _same(v.schema, body["schema"]) and v.references == refs:
                        return h._reply(
                            200,
                            {
                                "subject": subject,
                                "id": v.id,
                                "version": v.version,
                                "schema": v.schema,
                                "references": v.references,
                            },
                        )
                return h._reply(404, {"error_code": 40403, "message": "Schema not found"})
            if m := re.fullmatch(r"/schemas/ids/(\d+)", path):
                version = s.by_id.get(int(m.group(1)))
                if version is None:
                    return h._reply(404, {"error_code": 40403, "message": "Schema not found"})
                return h._reply(200, {"schema": version.schema, "references": version.references})
            if path == "/subjects":
                return h._reply(200, sorted(s.subjects))
            return h._reply(404, {"error_code": 404, "message": f"no route {method} {path}"})
