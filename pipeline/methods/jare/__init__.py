"""The JARe family: slm (DTKR retrieval) and oracle_task_id (the true task's slots), one shared base.

method.py   JareOptions and JareMethod (keys, then P slots per task; earlier tasks frozen)
model.py    the base with every finished task's slots injected (what train, eval and serve load)
slm.py, oracle_task_id.py   the two ways of routing the same slots at inference
"""
