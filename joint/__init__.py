"""Stage 2: joint retrieval-generation training; agentic RL."""
