"""Media ingestion for avseg: probe, decode, sample, and turn video/audio into model inputs.

Public API (stable)::

    from avsegcli import media

    info = media.probe(path)                 # MediaInfo: duration, fps, num_frames, width, height,
                                             #   audio_streams, has_audio, has_video, frame_times
    ex = media.vggish_examples(path_or_array, sample_rate=None)   # [K, 1, 96, 64] float32
    clip = media.read_clip(path, fps=1, image_size=224, via=None)  # Clip (whole video at once)
    for batch in media.iter_batches(path, fps=1, batch_size=32, image_size=224, via=None):
        ...                                  # Batch windows, bounded memory
    idx, ts = media.sample_times(info, fps=1)  # what the sampler takes, without decoding
    x = media.preprocess_frames(frames_uint8, image_size=512, via=224)  # [N, 3, S, S] float32
    m = media.resize_masks_back(masks, (H, W))
    patches = media.log_mel_chunks(waveform_16k)  # [C, 1, 96, 64]: one patch per second

Model input settings of the released checkpoints: S4/MS3 ``image_size=512, via=224``;
AVSS ``image_size=224, via=None``. Every unreadable input raises
:class:`avsegcli.errors.MediaError` (``str`` is ``"<path>: <reason>"``).
"""

from avsegcli.errors import MediaError
from avsegcli.media.audio import iter_seconds, load_audio, resample, vggish_examples
from avsegcli.media.clip import Batch, ChunkStream, Clip, NoAudioWarning, iter_batches, read_clip
from avsegcli.media.logmel import (
    SAMPLE_RATE,
    chunk_patch,
    log_mel_chunks,
    log_mel_spectrogram,
    mel_matrix,
    silence_patch,
    waveform_to_examples,
)
from avsegcli.media.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalize,
    preprocess_frames,
    resize_like_cv2,
    resize_like_pil,
    resize_masks_back,
)
from avsegcli.media.ffmpeg import AudioStreamInfo
from avsegcli.media.probe import MediaInfo, probe
from avsegcli.media.sampling import benchmark_indices, chunk_indices, is_constant_rate, sample_times
from avsegcli.media.video import VideoSource

__all__ = [
    "AudioStreamInfo", "Batch", "ChunkStream", "Clip", "IMAGENET_MEAN", "IMAGENET_STD", "MediaError",
    "MediaInfo", "NoAudioWarning", "SAMPLE_RATE", "VideoSource", "benchmark_indices", "chunk_indices",
    "chunk_patch", "is_constant_rate", "iter_batches", "iter_seconds", "load_audio", "log_mel_chunks", "log_mel_spectrogram",
    "mel_matrix", "normalize", "preprocess_frames", "probe", "read_clip", "resample", "resize_like_cv2",
    "resize_like_pil", "resize_masks_back", "sample_times", "silence_patch", "vggish_examples",
    "waveform_to_examples",
]
