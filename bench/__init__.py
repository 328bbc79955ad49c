"""fraudscore.bench: latency and throughput harness and CI gate for the runtime."""
