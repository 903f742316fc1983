"""People: users, passwords, two-factor codes, console sessions and login lockout."""
