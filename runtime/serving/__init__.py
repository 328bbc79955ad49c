"""What runs beside a payment processor: the bundle and its manifest, message decoding,
the ONNX Runtime scorer, the pure batch pipeline, Prometheus metrics and the Kafka
sidecar (plus `fraudscore score`, the same pipeline over files).

`fraudscore run` imports only this package, `fraudscore.features` and `fraudscore.errors`.
"""
