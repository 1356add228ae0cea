"""Users and tokens: sign-in, the signed-in user, and owners for every other feature's rows
(docs/auth.md)."""
