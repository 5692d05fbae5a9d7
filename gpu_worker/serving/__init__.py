"""Serving half of the GPU worker: one llama.cpp base model, LoRA adapters per request."""
