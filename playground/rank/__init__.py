"""INSIDE one rank process: the entry point, the training loop, the recorder, the strategies,
and the report a rank builds. Never imports the caller's side (host, result, views)."""
