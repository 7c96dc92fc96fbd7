"""ftcircuits: how fine-tuning rewires a language model's circuits."""

__version__ = "0.1.0"
