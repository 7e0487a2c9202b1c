"""Data: data sets and the clips they hold.

    datasets  clip records from a folder, a manifest or a release; the in-memory clip cache; `ClipDataset`
    releases  PHOENIX-2014-T and How2Sign as released (their corpus and sentence files, their official splits)
    records   a clip's record, and the errors and warnings bad input raises
    video     video I/O: decoding, frame sampling (looped when short), square resizing, the kit's one GIF writer
    splits    training / validation (signer-disjoint, random, official) and the validation split's development and
              test parts, which share no caption and no signer
"""
