"""Raw sources in, immutable de-identified prepared data sets out.

Nothing here imports trainables, sweeper or results. The reading side that trainables
uses is `data_prep.dataset`.
"""
