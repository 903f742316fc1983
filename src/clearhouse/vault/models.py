"""Vault tables (filled by the vault work)."""
