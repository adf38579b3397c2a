"""`edge-runtime fleet serve`: MQTT ingest into a database, a REST API and a server-rendered dashboard."""
