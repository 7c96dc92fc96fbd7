"""Fine-tuning: methods over PEFT, the training loop as a plain function, DeepSpeed, the worker."""
