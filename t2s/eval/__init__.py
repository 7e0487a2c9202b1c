"""Evaluation of a run: its clips for held-out captions, scored against the real clips of those captions.

    captions       the evaluation set of a part (seen, novel and paraphrased captions with their real clips)
    evaluate       one run's evaluation: sample each weight set through the pipeline, score it, write the rows
    compare        every metric of one weight set's row (distribution, paired, sign fidelity, back-translation)
    backtranslate  the gloss recognizer that reads a clip back (synthsign)
    metrics/       each metric's math, small and tested
"""
