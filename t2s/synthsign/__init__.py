"""synthsign: the built-in synthetic signer, data whose ground truth (glosses, hand positions) is known.

    glosses  the gloss vocabulary, how a caption maps to glosses, synonyms and paraphrases
    signer   the renderer: a 2D signer whose coloured gloves sign a gloss sequence (`render_clip`)
    dataset  the on-disk synthetic set: what determines it, its cache folder, its (parallel, atomic) generation
"""
