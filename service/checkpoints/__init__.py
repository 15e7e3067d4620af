"""A run's epoch checkpoints, in two modules by what each owns:

* `layout`: one epoch's checkpoint, its files and the names of its arrays; written by the workers
  (each engine's `state.py`) and read back by them and by the driver.
* `resume`: which checkpoint an interrupted run resumes from: the run's checkpoints read newest
  first, the damaged ones set aside (the driver, before Ray starts; no TensorFlow).

Ray Train's own record of a run's checkpoints is Ray's file; `service/compat/ray.py` reads and
rewrites it.

Example::

    from service.checkpoints import layout, resume
    layout.read_traces(directory)                  # every rank's reports, by rank
    resume.latest(checkpoints_dir)                 # (3, Path(".../checkpoint_..."))
"""
