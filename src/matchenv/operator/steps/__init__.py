"""The steps of one environment's converge, in the order the orchestrator (``operator/reconciler.py``) runs them:
``topology`` (bounds, ownership, ``credentials``, the broker objects, the ``archive``), ``autoscaling``,
``workers``, ``backfill``, ``status``. Each takes the :class:`~matchenv.operator.context.Context` and the shared
:class:`~matchenv.operator.context.Services` and returns what it did and saw."""
