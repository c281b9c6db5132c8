"""nmc: N replicas of a Node.js site in Docker, behind one port, relayed round-robin."""

__version__ = "0.1.0"
