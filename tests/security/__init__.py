"""Attack tests (issue 11): each drives real coordinator and agent processes the way an attacker would,
and asserts that the hole it names is closed. docs/security.md is the threat model they check."""
