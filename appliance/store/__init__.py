"""The append-only event log: the only durable state."""
