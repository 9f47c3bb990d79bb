"""The run machinery around the ML core: what makes a training run a safe, resumable command.

    train_and_evaluate.py  a whole run in a workdir: resume, epochs, checkpoints, results
    checkpoints.py         orbax checkpoints with a SHA-256 each, Ctrl-C deferred while writing
    workdir.py             the workdir's lock, settings and files (told from anyone else's)
    provenance.py          versions, git commit and CPU of a run, for metrics.json
    scripts.py             what the experiments/ scripts share: flags, one-line errors, data
    errors.py              RunError: a problem the user can fix, in one line

The core (jaxae/*.py, models/, tasks/) never imports from here.
"""
