"""The `clara` console script: one entry point (main), one module per core command."""
