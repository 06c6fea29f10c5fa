"""The project's shared vocabulary, importable by every package: its errors (vocab.errors)."""
