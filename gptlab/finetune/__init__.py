"""Fine-tuning: LoRA adapters (:mod:`gptlab.finetune.lora`), classification and instruction tuning."""
