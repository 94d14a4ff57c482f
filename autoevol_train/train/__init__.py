"""Fine-tuning: SFT recipes → TRL SFTTrainer (+ DeepSpeed ZeRO-3 through accelerate)."""
