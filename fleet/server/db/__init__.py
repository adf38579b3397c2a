"""The fleet server's database: schema (tables), engine and migrations (engine), queries."""
