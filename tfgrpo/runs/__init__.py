"""The runs room: where a run lives and who may write it.

``rundir`` is the run directory (``run.json``, reports, resume checks, the step history); ``backends``
opens checkpoints and the store on SQLite or PostgreSQL; ``runlock`` and ``pglock`` keep one writer per
run (a file lock, or a PostgreSQL advisory lock); ``gc_tuning`` sets the garbage collector for a run's
process. Modules here may import ``tfgrpo.errors``, ``tfgrpo.context``, ``tfgrpo.state`` and
``tfgrpo.models``; never tools/, evals/, integrations/, nodes/, graphs/ or the drivers at the root.
"""
