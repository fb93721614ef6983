"""ChatDoctor's instruction files (Kent0n-Li/ChatDoctor): GenMedGPT-5k (`chatdoctor5k.json`: a
patient's description -> a doctor's reply, generated with ChatGPT), and the HealthCareMagic /
iCliniq dumps in the same shape: a JSON list of Alpaca-style `{"instruction", "input", "output"}`,
one shared instruction ("If you are a doctor, please answer the medical questions based on the
patient's description.").

Read as Alpaca data, with one more rule: the patient's description (`input`) is the question, so
an empty one is an error. The files have no test split: a seeded one is cut. The answers are free
text (about 33 words in GenMedGPT-5k): score them with ROUGE-L (or BERTScore, as SLM's reference).
"""

from __future__ import annotations

from pathlib import Path

from data_prep import alpaca
from data_prep.common import DataPrepError, Source

FORMAT = "chatdoctor"


def read(path: Path, test_split: Path | None = None) -> Source:
    source = alpaca.read(path, test_split, fmt=FORMAT)
    for ex in source.train + (source.test or []):
        if not ex.input:
            raise DataPrepError(f"{ex.where}: field 'input' (the patient's description) is empty; a ChatDoctor "
                                "record is a question and its answer")
    return source
