"""Stage 1: guided data synthesis and Salient Compressor Pretraining (SCP)."""
