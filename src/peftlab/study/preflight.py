"""Checks made once, before a study starts any run, of what would otherwise fail every run alike.

Each run is a separate process that rebuilds its task, device and training settings; a wrong task file, model,
device, learning rate or setting would make every one of them fail the same way, minutes apart (an unknown hub id
alone costs each run about 45 s of download retries). Method ids and fields are checked earlier, when the
`--methods` entries are parsed (study.methods).
"""

from __future__ import annotations

from peftlab.errors import PeftlabError
from peftlab.study.errors import StudyError
from peftlab.study.plan import StudyConfig
from peftlab.study.tasks import build_task
from peftlab.train.device import resolve_device


def check_study(study: StudyConfig) -> None:  # or a ContinualStudy: the same settings, several tasks
    """StudyError naming the first problem: device, training settings (with each method's learning rate), then
    the task: its data, and its model's input pipeline (tokenizer or image size) on one training example."""
    try:
        resolve_device(study.settings.device)
    except PeftlabError as err:
        raise StudyError(str(err)) from None
    for method in study.methods:  # the training loop's own rules, learning rate included
        try:
            study.settings.train_config(method.lr, study.settings.device)
        except PeftlabError as err:
            raise StudyError(f"method {method.label!r}: {err}") from None
    for spec in study.tasks:
        try:
            task = build_task(spec)
            task.collate(task.splits().train[:1])
        except StudyError:
            raise
        except Exception as err:  # noqa: BLE001  (data files, tokenizers and hub downloads raise their own types)
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise StudyError(f"task {spec.name!r} with model {spec.model or 'default'!r} could not be "
                             f"prepared: {type(err).__name__}: {message}") from None
