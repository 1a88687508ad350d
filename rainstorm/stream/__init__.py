"""RainStorm's stream layer: operators, job files, and the exactly-once bookkeeping core.

Layout (each module holds one idea):
- ``operators``  Transform / FilteredTransform / AggregateByKey and ``args`` (what job files use)
- ``jobfile``    load a job file's ``stages`` with one-line errors
- ``partition``  the stable hash tuples are partitioned with
- ``plan``       physical stages: which operators run fused in which task group
- ``chain``      run one physical stage's operators over a batch; shape outputs, sink and dead lines
- ``records``    log records and tuple batches (msgpack, versioned, validated)
- ``channels``   wire messages between tasks; the producer's outbox / receiver marks
- ``stores``     LogStore (HyDFS) and InboxStore (Redis) protocols + in-memory versions
- ``task``       the per-task sans-IO state machine (fence -> rebuild -> open -> process/commit/apply)
- ``sim``        a seeded simulation of whole jobs with crashes, zombies, Redis loss and a lossy network
- ``reference``  the plain sequential meaning of a job, the oracle the tests compare with
"""

from rainstorm.stream.jobfile import JobError, load_job
from rainstorm.stream.operators import AggregateByKey, Args, FilteredTransform, Transform, args

__all__ = ["AggregateByKey", "Args", "FilteredTransform", "JobError", "Transform", "args", "load_job"]
