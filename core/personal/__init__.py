"""Per-user models: fine-tuning (one user or many batched), calibration, the promotion gate, memory."""
