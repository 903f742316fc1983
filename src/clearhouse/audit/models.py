"""Audit tables (filled by the audit work)."""
