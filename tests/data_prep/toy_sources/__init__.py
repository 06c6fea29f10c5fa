"""A package of source kinds for the tests, found as data_prep.sources finds its own: each module that
declares a KIND (data_prep.sources.discover). Its one module, `toy`, is a source kind written by following
docs/design.md §5's steps and nothing else."""
