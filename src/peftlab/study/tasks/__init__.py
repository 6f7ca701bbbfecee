"""The study's tasks: built-in ones by name, or a user's CSV/JSONL file. `build_task(spec)` is the only entry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from peftlab.study.data import arithmetic, dialogue, files, images, molecules, text
from peftlab.study.data.examples import LabeledData
from peftlab.study.errors import StudyError
from peftlab.study.tasks.base import Task, TaskSpec
from peftlab.study.tasks.causal_lm import CausalLMTask
from peftlab.study.tasks.classification import ClassificationTask
from peftlab.study.tasks.encoders import AudioEncoder, ImageEncoder, TextEncoder

DEFAULT_AUDIO_MODEL = "facebook/wav2vec2-base"  # on the Hugging Face hub only


def _sentiment(spec: TaskSpec) -> Task:
    return ClassificationTask("sentiment", text.sentiment(), TextEncoder(spec.model or "minilm", spec.max_length),
                              spec, test=1000, validation=200)


def _topic(spec: TaskSpec) -> Task:
    return ClassificationTask("topic", text.bbc_topics(), TextEncoder(spec.model or "minilm", spec.max_length),
                              spec, test=400, validation=200)


def _image(spec: TaskSpec) -> Task:
    return ClassificationTask("image", images.default_images(),
                              ImageEncoder(spec.model or "efficientnet-lite0", spec.image_size), spec,
                              test=400, validation=200)


def _chat_topic(spec: TaskSpec) -> Task:
    return ClassificationTask("chat-topic", dialogue.chatterbot_topics(),
                              TextEncoder(spec.model or "minilm", spec.max_length), spec, test=300, validation=100)


def _molecules(spec: TaskSpec) -> Task:
    return ClassificationTask("molecules", molecules.bbb_permeability(),
                              TextEncoder(spec.model or "rxnfp-bert", spec.max_length), spec, test=800, validation=200)


def _dialogue(spec: TaskSpec) -> Task:
    return CausalLMTask("dialogue", dialogue.chatterbot_pairs(), spec, model_ref=spec.model or "smollm2",
                        test=200, validation=100, chat=True, metric="perplexity", curve_metric="perplexity")


def _arithmetic(spec: TaskSpec) -> Task:
    return CausalLMTask("arithmetic", arithmetic.additions(), spec, model_ref=spec.model or "smollm2",
                        test=300, validation=100, chat=False, metric="exact_match", curve_metric="exact_match")


BUILTIN_TASKS: dict[str, Callable[[TaskSpec], Task]] = {
    "sentiment": _sentiment, "topic": _topic, "image": _image, "dialogue": _dialogue, "arithmetic": _arithmetic,
    "molecules": _molecules, "chat-topic": _chat_topic,
}


def _file_task(spec: TaskSpec) -> Task:
    path = Path(spec.name)
    data = files.read_task_file(path)
    if isinstance(data, LabeledData):
        held_out = max(1, len(data.examples) // 10)
        encoder = (AudioEncoder(spec.model or DEFAULT_AUDIO_MODEL) if files.is_audio_file(path)
                   else TextEncoder(spec.model or "minilm", spec.max_length))
        return ClassificationTask(path.stem, data, encoder, spec, test=held_out, validation=held_out)
    held_out = max(1, len(data) // 10)
    return CausalLMTask(path.stem, data, spec, model_ref=spec.model or "smollm2", test=held_out,
                        validation=held_out, chat=False, metric="exact_match", curve_metric="perplexity")


def build_task(spec: TaskSpec) -> Task:
    """The task named by `spec.name`: a built-in task or a path to a .csv/.jsonl file."""
    if spec.name in BUILTIN_TASKS:
        return BUILTIN_TASKS[spec.name](spec)
    if Path(spec.name).suffix.lower() in files.DATA_FILE_SUFFIXES:
        return _file_task(spec)
    raise StudyError(f"unknown task {spec.name!r}; built-in tasks: {', '.join(BUILTIN_TASKS)}, "
                     "or give a .csv (text,label / prompt,completion) or .jsonl file")


__all__ = ["BUILTIN_TASKS", "Task", "TaskSpec", "build_task"]
