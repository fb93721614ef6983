"""What runs the model: loading the base model and tokenizer (models), processes and ranks
(distributed), the DeepSpeed config, the encoder's config and library log routing."""
