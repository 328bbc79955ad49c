"""Preparing data, offline: files and tables, the transaction simulator, the evaluation
protocol, bundle evaluation, training fingerprints and load-generator messages.

Nothing here runs beside a payment processor; `fraudscore run` imports none of it.
"""
