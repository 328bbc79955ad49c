"""fraudscore.train: Keras training on the baseline feature table (needs the `train` extra).

The training commands arrive with the training issue; this package holds their code.
"""
