"""The facility side: what hospital systems run to publish examination events to Kafka."""
