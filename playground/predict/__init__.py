"""The cost model: what a run should cost, before it runs.

  formulas   the math, numbers in and numbers out (no torch import)
  profile    what is read off the model by running it in this process
  predict    ``predict(config)``: the formulas applied to every rank

Import the modules themselves; this package imports nothing, so that
``formulas`` stays free of torch.
"""
