"""Model construction, saving and loading (safetensors only, never remote code)."""
