"""The model: backbone, the three LoRA adapters, memory tokens, generation, storage, loading."""
