"""fraudscore.train: Keras training on a feature table (needs the `train` extra).

`trainer` runs `fraudscore train` (the handbook's time split, early stopping, threshold,
fingerprint, run directory); `models` builds the Keras networks; `cli` registers the
command. The runtime never imports this package.
"""
