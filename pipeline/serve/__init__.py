"""`slm serve`: any method's model behind an OpenAI-compatible HTTP API (as vLLM implements it).

    session.py   InferenceSession: the method's model (+ DTKR router for JARe methods) and the
                 tokenizer, loaded once; routes a batch per sample and picks up newly DONE tasks
                 (what `slm generate` also runs on)
    decode.py    DecodeBatch: rows join (prefill + KV merge) and leave one running batch; stops,
                 streaming, cancellation
    sampling.py  greedy / top-k / min-p / top-p sampling after presence, frequency, repetition penalties
    batcher.py   the worker thread: admits waiting requests at every decode step (continuous
                 batching) or per whole batch (static), reloads when the batch is empty
    protocol.py  strict request validation (400 naming an unsupported field), chat messages ->
                 the prompt format, response bodies (chat/completions, SSE chunks, usage, errors)
    app.py       the FastAPI app: routes, API key, body limits, 4xx errors, SSE
"""

# Addresses only this machine reaches: serving there needs no API key, and /admin/reload answers them.
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
