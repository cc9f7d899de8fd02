"""The in-memory domain: message trees, conversation actors and their registry."""
