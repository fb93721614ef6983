"""seq_lora: one LoRA fine-tuned through the sequence, task after task: the forgetting floor."""

from __future__ import annotations

from pipeline.methods.lora.method import LoraMethod


class SeqLora(LoraMethod):
    name = "seq_lora"
    role = "floor"
    trains = "one LoRA (same rank, same modules) trained through the sequence"
    infers = "the LoRA after the last task"
