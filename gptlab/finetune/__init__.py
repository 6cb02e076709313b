"""Fine-tuning: LoRA adapters, classification and instruction fine-tuning, prompt styles."""
