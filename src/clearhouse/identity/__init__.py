"""Identity: merchants, API keys and request signing, people, roles, approvals."""
