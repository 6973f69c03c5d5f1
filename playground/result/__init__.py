"""WHAT came back: the ranks' reports accounted into a ``RunResult``, the replayed pipeline,
the Chrome trace and the CLI table; JSON both ways."""
