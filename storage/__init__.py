"""Persistence: SQLAlchemy models (models.py), engines/sessions and migrations (db.py), weight
bytes (weights.py), repository functions (repository/), value types (records.py), errors."""
