"""Helpers of the tests (not tests themselves): factories of events, a stand-in schema
registry, a Kafka proxy, Prometheus binaries; the local deployments are ``ehb.commands.local``."""
