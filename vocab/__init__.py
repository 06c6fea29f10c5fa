"""The project's shared vocabulary, importable by every package and importing none of them: its errors and the
one error path (vocab.errors), the names that cross packages (vocab.names) and the command line's parser, flags
and tool protocol (vocab.cli)."""
