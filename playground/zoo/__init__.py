"""WHICH model and data: the named models and datasets, custom ones checked up front, what a
model is made of, its tensor-parallel plan, and the ``Workload`` resolved once per run."""
