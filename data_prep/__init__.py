"""Data preparation: sources -> unified instruction records -> fixed, checked splits on disk.

What later stages use:
    query_text(instruction, input)                        the DTKR query text
    build_prompt(tokenizer, prompt_format, instruction, input), build_response(tokenizer, output)
    prompt_add_special_tokens(prompt_format)              how to tokenize the prompt
    load_prepared(cfg, layout) -> {task: DatasetDict}     checked load of `slm prepare`'s output

Only light modules are imported here, so `import data_prep` never pulls in torch or datasets.
"""

from typing import Any

from data_prep.templates import build_prompt, build_response, prompt_add_special_tokens, query_text

__all__ = ["build_prompt", "build_response", "load_prepared", "prompt_add_special_tokens", "query_text"]


def __getattr__(name: str) -> Any:
    # load_prepared imports pipeline.config/layout; resolve it lazily to keep this import cheap.
    if name == "load_prepared":
        from data_prep.prepared import load_prepared

        return load_prepared
    raise AttributeError(name)
