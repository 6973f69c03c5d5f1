"""THE CALLER's side: the launcher and its warm pool, ``run()``, ``load_result()``, the
single-device baseline and the process-health helpers."""
