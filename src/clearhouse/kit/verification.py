"""What every ``verify`` (ledger, audit trail) reports: ok, the first failure, and the
failures found, capped so that a wrecked table still gives a readable report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_FAILURES = 100


@dataclass
class Findings:
    ok: bool = True
    chain_head: dict[str, Any] = field(default_factory=dict)
    first_failure: dict[str, Any] | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, check: str, detail: str, **where: Any) -> None:
        failure = {"check": check, "detail": detail, **where}
        if self.first_failure is None:
            self.first_failure = failure
        self.ok = False
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(failure)

    def counts(self) -> dict[str, int]:
        """The ``*_checked`` figures of the subclass, in their declared order."""
        return {name: value for name, value in vars(self).items() if name.endswith("_checked")}

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.counts(), "chain_head": self.chain_head, "first_failure": self.first_failure,
                "failures": self.failures}


def report_to_operator(findings: Findings, *, as_json: bool, what: str, summary: str, console: Any) -> int:
    """What a ``verify`` command prints (the JSON report, or one line) and its exit code:
    0 when ``what`` verified, 1 at the first failure."""
    import json

    if as_json:
        print(json.dumps(findings.as_dict()))
    elif findings.ok:
        console.print(f"[green]{what} verified[/]: {summary}")
    else:
        console.print(f"[red]{what} verification failed[/]: {json.dumps(findings.first_failure)}")
    return 0 if findings.ok else 1
