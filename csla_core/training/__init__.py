"""Making CSLA mappers without a dataset.

``config`` (``TrainConfig``), ``sampling`` (seeded samples, the replay pool, held-out error),
``losses`` (the loss terms), ``loop`` (``train``: the loop, checkpoints, resuming), ``hub``
(model card and upload) and ``calibrate`` (first-run mappers by a closed-form fit).
Nothing is imported here, so the command line reads ``TrainConfig`` without loading the loop.
"""
