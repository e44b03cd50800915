"""The simulated city: synthetic examinations of Ho Chi Minh City facilities, for the demo,
the benchmarks and the tests (its XML export for the gateway is ``ehb.commands.xml_export``)."""
