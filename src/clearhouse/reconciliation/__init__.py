"""Reconciliation and clearing: prove that what the ledger says happened is what the channels and banks say.

Statements are parsed (``formats``) into one frame shape (``frames``), matched against our own lines
(``sources``) by the Polars engine (``matching``) under per-channel rules (``rules``); every line that
does not match becomes a case (``cases``) that people work to resolution, and ``clearing`` reports what
each channel owes us per day.
"""
