"""The commands: the `ehb` CLI, the demo, document generators and operator tools.

The top layer: may import every other package; nothing imports it.
"""
