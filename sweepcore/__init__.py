"""Pieces both :mod:`engine` and :mod:`analysis` use, with no dependency on either.

* :mod:`sweepcore.registry` — the name → callable :class:`~sweepcore.registry.Registry`
  behind every extension point (stages, corpora, importance methods, search algorithms,
  plots).
* :mod:`sweepcore.pareto` — Pareto maths: the 2-D front and hypervolume, NSGA-II sorting and
  crowding for k objectives, and the seed-averaged configuration front.
* :mod:`sweepcore.atomic` — write a file under a temporary name and rename it, so a killed
  writer never leaves half a file (every run-directory file goes through it).

Data flows one way (``engine`` writes the run directory, ``analysis`` reads it); this package
is what the two share, so neither needs to import the other.
"""
