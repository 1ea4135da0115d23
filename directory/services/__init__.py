"""Domain logic. Functions take a session and keyword-only arguments, return values,
raise DirectoryError and never commit: the caller owns the transaction."""
