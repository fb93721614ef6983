"""The LoRA family: PEFT LoRAs of the adapter's rank on the adapter's modules.

method.py   LoraMethod: one LoRA continued through the sequence or restarted per stage
model.py    building, loading and saving those LoRAs
seq_lora.py, replay.py, multitask.py   one LoRA; o_lora.py, n_lora.py   one LoRA per task, summed
"""
