"""Envelope encryption (filled by the data-protection work)."""
