"""A study: every variant x seed through notebooks/train.ipynb, then the HTML report.

    kernel     a notebook executed with papermill (light: a run's papermill process imports only this)
    runs       paths and names, planning (every config validated first), locks, one run through the notebook, failures
    derived    a run derived from another's training (a variant that differs only in keys that do not change it)
    progress   the live display of a study's runs
    executors  submitit jobs (this machine, Slurm)
    export     notebooks/analysis.ipynb executed for a study and exported to HTML
    ablate     `run_study`: the whole study
"""
