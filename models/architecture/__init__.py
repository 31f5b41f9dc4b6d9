"""Model architecture: the spec, Hugging Face config intake, presets, and the shapes cost models use."""
