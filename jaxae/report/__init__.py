"""What a person sees of a run: figures, TensorBoard events, the console's lines and progress.

    figures.py      PNG figures: loss curves, each task's test pairs
    tensorboard.py  TensorBoard event files (tensorboardX)
    summaries.py    the epoch's console line and the final numbers (one seed or their spread)
    progress.py     an epoch's progress while it runs, in place on a terminal

The core (jaxae/*.py, models/, tasks/) never imports from here.
"""
