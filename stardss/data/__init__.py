"""Data: sources, row validation and quarantine, mixtures, chat formatting with character
offsets, the trainee's tokenizer, and the training data of a run (load)."""
