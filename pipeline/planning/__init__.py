"""`slm plan`: per-GPU memory of a training step from the model's shape alone (shapes), each
method's own load (loads, declared by the method), and the table and its checks (memory, command)."""
