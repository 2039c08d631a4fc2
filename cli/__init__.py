"""The `simsearch` command: parses arguments, calls the library, prints."""
