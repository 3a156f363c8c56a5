"""Agent models: per-modality encoders, fusion operators, the PARSE model and a monolithic one."""
