"""Training: the two-stage recipe (train.py), one stage (stage.py, stage_build.py, stage_log.py), the loop
(engine.py), optimizer and schedule (optim.py), EMA (ema.py) and the class prototypes (prototypes.py)."""
