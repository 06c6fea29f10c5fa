"""One fit: model, loss, metrics. Imports only data_prep's reading side (data_prep.dataset)."""
