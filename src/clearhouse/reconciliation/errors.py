"""The rules of reconciliation, each a stable problem+json ``code``."""

from __future__ import annotations

from clearhouse.kit.errors import ClearhouseError, NotFound


class StatementInvalid(ClearhouseError):
    """The file cannot be read as the statement it claims to be; nothing was imported.

    ``line`` names the first line (1-based, in the file) that is wrong, when there is one.
    """

    code = "statement_invalid"
    status = 422
    title = "Statement file is not valid"

    def __init__(self, detail: str, *, line: int | None = None):
        super().__init__(detail if line is None else f"line {line}: {detail}", line=line)
        self.line = line


class StatementAlreadyImported(ClearhouseError):
    """The same file (by SHA-256 of its bytes) was imported before, or the same bank statement in other bytes
    (by its figures), or another statement under the same bank's statement number (account, number, sequence and
    closing day): a bank statement is imported once. The detail names the earlier reconciliation."""

    code = "statement_already_imported"
    status = 409
    title = "This statement file was already imported"


class ReconciliationNotFound(NotFound):
    code = "reconciliation_not_found"
    title = "Reconciliation not found"


class CaseNotFound(NotFound):
    code = "recon_case_not_found"
    title = "Reconciliation case not found"


class CaseStateConflict(ClearhouseError):
    """The case is not in a state that allows this (resolving a resolved case, ...)."""

    code = "recon_case_state_conflict"
    status = 409
    title = "Case is not in a state that allows this"


class UnknownStatementFormat(ClearhouseError):
    code = "statement_format_unknown"
    status = 422
    title = "Unknown statement format or mapping"
