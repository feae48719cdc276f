"""The pipeline stages, one package each, plus the shared preprocessing."""
