"""What crosses stages: circuits over a fine-tuning run, their dynamics, compositional merges."""
