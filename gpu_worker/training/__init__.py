"""Training half of the GPU worker: pure ML code, no AWS.

base_cache.load_base   GGUF -> float32 transformers model + tokenizer, cached by sha256
data                   normalized records -> token ids with prompt-masked labels
trainer.train_lora     PEFT LoRA training (TrainConfig -> TrainResult, PEFT files on disk)
export.export_gguf     PEFT files -> GGUF LoRA adapter for llama.cpp
parity.check_parity    PEFT vs llama.cpp + exported adapter on a fixed prompt

Modules import torch/transformers/peft/llama_cpp lazily, inside the functions that need them.
"""
