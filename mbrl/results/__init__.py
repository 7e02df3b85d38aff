"""Comparing algorithms: sweeps that launch runs, and tables and plots that read them.

* :mod:`mbrl.results.sweep` — ``mbrl sweep``: a grid of agents x tasks x seeds
  (x overrides) on a local process pool or a Ray cluster, resumable.
* :mod:`mbrl.results.runs` — reading run directories into tidy records.
* :mod:`mbrl.results.stats` — IQM, stratified bootstrap CIs, probability of
  improvement and performance profiles (Agarwal et al. 2021, "Deep Reinforcement
  Learning at the Edge of the Statistical Precipice", arXiv:2108.13264).
* :mod:`mbrl.results.table` — ``mbrl table``: markdown/CSV/LaTeX results tables.
* :mod:`mbrl.results.plot` — ``mbrl plot``: learning curves, IQM curves, profiles.
"""
