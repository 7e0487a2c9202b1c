"""From run directories to tables, statistics, figures and findings: everything the analysis notebook shows.

    from t2s.report import findings, load, notebook
    study = load.load_study("quickstart")
    notebook.show(findings.findings_html(study))

The rooms, in reading order (each imports only those before it):
    load      what a metric is; a run and a study read from executed/<study>/; each run's metric values
    stats     means and intervals over seeds, paired and Welch differences, Holm's adjustment
    tables    the comparison table (also written as CSV/Markdown), run status, paths shown in a shared report
    figures   Plotly figures (one helper draws every per-variant seed band)
    samples   GIF sample grids: training samples, and evaluation clips beside the real clip with their readings
    following does the model follow the text? calibration checks and back-translation between floor and ceiling
    findings  the study's questions (declared by the variant files) answered from the numbers
    pages     the overview and provenance sections
    notebook  display in a notebook and the ipywidgets explorer
"""
