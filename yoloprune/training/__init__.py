"""Training stages on Ultralytics' trainer that keep a model's (pruned) architecture: fine-tune, sparsify."""
