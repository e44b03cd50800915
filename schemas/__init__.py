"""The contract every stage shares: Avro schemas (``avro/*.avsc``), their versioned catalog
(``catalog.json``), the Confluent wire-format codec, and the reference data (province codes,
the facility registry) under ``reference/``."""

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
