"""The Faust stream processor: validate, enrich and route examination events (``app``)."""
