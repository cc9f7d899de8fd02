"""The HTTP edge: aiohttp app, routes, schemas, errors and the CLI."""
