"""WHAT a run is: the config and every check on it, the topology of ranks, the cuts, the pipeline
schedules as data. Pure; imports nothing else of the package but ``instrument``."""
