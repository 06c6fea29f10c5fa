"""Phantom chest radiographs in each real source's format (target DICOM, NIH PNG, CheXpert JPEG), for
the demo, the tests and benchmarks. Nothing a patient's data passes through lives here: data_prep
reads what this package writes exactly as it reads the real sources.

generate: the sets and their label tables (`python -m phantom KIND --out DIR`); settings: what a set
looks like (the command's flags and a spec's [data.phantom], one model); anatomy: the body and the
film; findings: how each label of each source shows on the film, and how common it is.
"""
