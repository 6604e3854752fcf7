"""One module per --mode of main.py, and what the modes share (restoring a model, conditions, the guided model_fn)."""
