"""The GPT itself (GPT-2 and llama variants), its presets, int8 quantisation, Hugging Face weight mapping,
and the token-level generation engine that training samples and every front end share."""
