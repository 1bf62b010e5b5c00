"""The ``omnifuse`` command line (click). Thin: every command calls into omnifuse_core, sim, server or client."""
