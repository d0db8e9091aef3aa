"""Ray-based sweep engine for transformer compression studies.

Data flows one way: ``sweeps/<study>.yaml`` → :mod:`engine.config` → :mod:`engine.sweep`
(data → teacher → importance → compression stages → measurement, one Ray Tune trial per
student) → ``results.parquet`` → :mod:`analysis`.
"""
