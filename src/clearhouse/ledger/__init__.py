"""The double-entry ledger: the single source of truth for every balance."""
