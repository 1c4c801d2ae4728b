"""The built-in digits model zoo: data, training scripts and the shipped small models."""
