"""Parts of ``rvseg sweep``: the SPEC format and presets (:mod:`.spec`), run-folder claims
(:mod:`.claims`), the child-process launcher (:mod:`.child`), the Optuna storage and study (:mod:`.storage`)
and the results table (:mod:`.results`).
The sweep itself is :mod:`rvseg.sweep`."""
