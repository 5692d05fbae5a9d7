"""Shared layer of the LoRA service API functions.

Nothing heavy lives here: no torch, transformers, peft or llama_cpp. boto3, numpy and gguf
are imported lazily by the modules that need them, so importing a function module stays cheap.
"""
