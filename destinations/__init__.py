"""The destination types that ship with eventgate, each an ordinary plugin."""
