"""Plan at scale (``playground.plan``): will a model fit, split this way, on that many GPUs?
``plan(config) -> Plan``, predicted by running the playground's own
strategy code for one rank of each kind on fake tensors (``planner``)."""
