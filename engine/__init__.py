"""Ray-based sweep engine for transformer compression studies.

Data flows one way: ``sweeps/<study>.yaml`` → :mod:`engine.config` → :mod:`engine.sweep`
(data → teacher → importance → compression stages → measurement, one Ray Tune trial per
student) → ``results.parquet`` → :mod:`analysis`.
"""

import time

# When this process began importing the engine: in a trial worker, the start of what it pays
# to import torch, transformers and the engine before its first trial (engine.worker).
IMPORT_STARTED_AT = time.time()
