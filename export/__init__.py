"""fraudscore.export: Keras run -> ONNX bundle with a parity gate (needs the `train` extra)."""
