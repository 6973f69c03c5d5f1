"""READ a RunResult (and call ``run``): the figures, the data-flow picture and the widget app."""
