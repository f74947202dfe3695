"""One module per loss term of the pretraining objective."""
