"""Fine-tuning: prompt encoding, the training loop as a plain function, accuracy."""
