"""The contract every stage shares: Avro schemas (``avro/*.avsc``), their versioned catalog
(``catalog.json``), the Confluent wire-format codec, and the reference data (province codes,
the facility registry) under ``reference/``; the topics (``topics``), partitioners
(``partitioning``), Vietnam time and date parsing (``time``), the reason codes of every stage
(``reasons``) and the project's base error (``errors``).

The bottom layer: it imports nothing else of the project, and every package may import it."""

from schemas.catalog import SUBJECTS, Catalog, SchemaEntry, load_catalog
from schemas.codec import AvroCodec, Decoded
from schemas.errors import DecodeError, EncodeError, Rejected, SchemaCatalogError

__all__ = [
    "SUBJECTS",
    "AvroCodec",
    "Catalog",
    "Decoded",
    "DecodeError",
    "EncodeError",
    "Rejected",
    "SchemaCatalogError",
    "SchemaEntry",
    "load_catalog",
]
