"""A durable event broker spoken to over gRPC, on SQLite or PostgreSQL."""

__version__ = "0.1.0"
