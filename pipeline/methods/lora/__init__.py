"""The LoRA family: PEFT LoRAs of the adapter's rank on the adapter's modules.

method.py   LoraMethod: one LoRA continued through the sequence or restarted per stage
model.py    building, loading and saving those LoRAs (LoraSettings: rank, alpha, dropout, targets)
seq_lora.py, replay.py, multitask.py   one LoRA
peers.py    the published peers' shared part: one LoRA per task, presets (uniform | official)
o_lora.py, n_lora.py, gainlora.py (+ gates.py)   the peers, each with its own loss (and gates)
"""
