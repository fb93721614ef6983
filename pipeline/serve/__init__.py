"""`slm serve`: the JARe model behind an OpenAI-compatible HTTP API.

    session.py   InferenceSession: model + router + tokenizer, loaded once; routes a batch per
                 sample and picks up newly DONE tasks (what `slm generate` also runs on)
    decode.py    one batched decode loop: per-row sampling, stop strings, streaming, cancellation
    batcher.py   the worker thread: gathers concurrent requests into batches, reloads between them
    protocol.py  request validation and response bodies (chat/completions, SSE chunks, errors)
    app.py       the FastAPI app: routes, body limits, 4xx errors, SSE
"""
