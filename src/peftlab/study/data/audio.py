"""Audio data: a CSV with columns audio,label, where audio is a WAV file's path (relative to the CSV's folder)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from peftlab.study.errors import StudyError

SAMPLE_RATE = 16_000


def read_wav(path: str | Path, max_seconds: float) -> np.ndarray:
    """A 16-bit PCM WAV file as float32 mono samples in [-1, 1] at 16 kHz (channels averaged, other rates resampled
    linearly), cut to `max_seconds`."""
    try:
        with wave.open(str(path), "rb") as handle:
            width, channels, rate = handle.getsampwidth(), handle.getnchannels(), handle.getframerate()
            frames = handle.readframes(handle.getnframes())
    except (OSError, EOFError, wave.Error) as err:
        raise StudyError(f"audio file {path} is not a readable WAV file ({err})") from None
    if width != 2:
        raise StudyError(f"audio file {path} has {8 * width}-bit samples; convert it to 16-bit PCM WAV")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    samples = samples.reshape(-1, channels).mean(axis=1)  # (frames * channels,) -> (frames,)
    if rate != SAMPLE_RATE:
        positions = np.arange(0, len(samples), rate / SAMPLE_RATE)
        samples = np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)
    return samples[: int(max_seconds * SAMPLE_RATE)]
