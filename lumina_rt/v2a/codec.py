"""Audio front end and back end of Lumina-V2A: waveform -> STFT -> mel -> latent, and latent -> mel -> waveform.

- `AudioSpec`: sample rate, STFT and mel sizes, and how audio frames line up with video frames;
- `mel_filterbank` / `mel_spectrogram`: an own HTK-mel triangular filterbank over `torch.stft` magnitudes;
- `AudioCodec`: the audio latent, a linear autoencoder (PCA of log-mel blocks, whitened components) fitted on the
  synthetic sounds, as the built-in video model's latent is PCA of pixel blocks;
- `griffin_lim` / `mel_to_waveform`: the vocoder, mel -> linear magnitude (non-negative least squares through the
  filterbank's pseudo-inverse, refined multiplicatively) -> phase by Griffin-Lim on `torch.stft` / `torch.istft`.

Alignment: mel frame j is centred on sample j * hop; a clip of F video frames at `fps` has F * sample_rate // fps
samples and F * mel_frames_per_video_frame mel frames.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lumina_rt.config import strict_fields
from lumina_rt.errors import CheckpointError, ConfigError, InputError
from lumina_rt.files import save_tensors

LOG_FLOOR = 1e-3  # log-mel floor: log(mel + LOG_FLOOR), about -60 dB below a full-scale tone's mel peak
CODEC_WEIGHTS = "audio_codec.safetensors"


@dataclass(frozen=True)
class AudioSpec:
    """How a model's audio is sampled and framed.

    `mel_frames_per_video_frame` mel frames (hop `hop` samples) cover one video frame at `fps`; the audio latent
    has `mel_frames_per_video_frame // codec time block` frames per video frame (see `AudioCodec`).
    """

    sample_rate: int = 16000
    hop: int = 250
    n_fft: int = 1024
    n_mels: int = 40
    mel_frames_per_video_frame: int = 8
    fps: int = 8
    f_min: float = 100.0
    f_max: float = 8000.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "hop", "n_fft", "n_mels", "mel_frames_per_video_frame", "fps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"AudioSpec.{name} must be a positive integer, got {value!r}")
        if self.sample_rate % self.fps or (self.sample_rate // self.fps) != self.hop * self.mel_frames_per_video_frame:
            raise ConfigError(
                f"AudioSpec: one video frame is sample_rate / fps = {self.sample_rate}/{self.fps} samples, which must "
                f"equal hop * mel_frames_per_video_frame = {self.hop}*{self.mel_frames_per_video_frame}"
            )
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ConfigError(f"AudioSpec: need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}")

    @property
    def samples_per_video_frame(self) -> int:
        return self.sample_rate // self.fps

    def samples(self, frames: int) -> int:
        """Waveform length of a clip of `frames` video frames."""
        return int(frames) * self.samples_per_video_frame

    def mel_frames(self, frames: int) -> int:
        return int(frames) * self.mel_frames_per_video_frame

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AudioSpec:
        return strict_fields(cls, raw, "AudioSpec")


# ------------------------------------------------------------------------------------------------
# Mel spectrogram
# ------------------------------------------------------------------------------------------------


def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: torch.Tensor | float) -> torch.Tensor:
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(spec: AudioSpec) -> torch.Tensor:
    """Triangular filters [n_mels, n_fft // 2 + 1] (float32), equally spaced on the HTK mel scale, peak 1."""
    n_freqs = spec.n_fft // 2 + 1
    freqs = torch.linspace(0, spec.sample_rate / 2, n_freqs, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(spec.f_min)), float(hz_to_mel(spec.f_max)), spec.n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def mel_centres(spec: AudioSpec) -> torch.Tensor:
    """Centre frequency (Hz) of each mel band [n_mels]."""
    m = torch.linspace(float(hz_to_mel(spec.f_min)), float(hz_to_mel(spec.f_max)), spec.n_mels + 2)
    return mel_to_hz(m[1:-1]).float()


def _window(spec: AudioSpec, device: torch.device) -> torch.Tensor:
    return torch.hann_window(spec.n_fft, device=device)


def stft(wave: torch.Tensor, spec: AudioSpec) -> torch.Tensor:
    """Complex STFT [..., n_fft/2+1, samples // hop] (centred frames; frame j centred on sample j * hop)."""
    shape = wave.shape
    flat = wave.reshape(-1, shape[-1]).float()
    s = torch.stft(flat, spec.n_fft, spec.hop, window=_window(spec, flat.device), center=True, return_complex=True)
    frames = shape[-1] // spec.hop
    return s[..., :frames].reshape(*shape[:-1], s.shape[-2], frames)


def mel_spectrogram(wave: torch.Tensor, spec: AudioSpec) -> torch.Tensor:
    """Magnitude mel spectrogram [..., n_mels, samples // hop] of waveforms [..., samples]."""
    if wave.shape[-1] % spec.hop:
        raise InputError(f"waveform length {wave.shape[-1]} is not a multiple of the hop {spec.hop}")
    mag = stft(wave, spec).abs()
    return torch.einsum("mf,...ft->...mt", mel_filterbank(spec).to(mag.device), mag)


def log_mel(wave: torch.Tensor, spec: AudioSpec) -> torch.Tensor:
    """log(mel + LOG_FLOOR) [..., n_mels, frames]: what the audio latent encodes."""
    return torch.log(mel_spectrogram(wave, spec) + LOG_FLOOR)


# ------------------------------------------------------------------------------------------------
# Vocoder: mel -> linear magnitude -> Griffin-Lim
# ------------------------------------------------------------------------------------------------


def mel_to_linear(mel: torch.Tensor, spec: AudioSpec, iters: int = 30) -> torch.Tensor:
    """Non-negative linear magnitude [..., n_fft/2+1, T] whose mel is close to `mel` [..., n_mels, T].

    Starts from the pseudo-inverse (clamped at 0), then `iters` multiplicative NMF-style updates
    S <- S * (Fb^T mel) / (Fb^T Fb S), which keep S >= 0 and sharpen tonal peaks that the pseudo-inverse smears.
    """
    fb = mel_filterbank(spec).to(mel.device)
    mel = mel.float().clamp_min(0.0)
    s = torch.einsum("fm,...mt->...ft", torch.linalg.pinv(fb), mel).clamp_min(1e-6)
    num = torch.einsum("mf,...mt->...ft", fb, mel)
    for _ in range(iters):
        den = torch.einsum("mf,...mt->...ft", fb, torch.einsum("mf,...ft->...mt", fb, s))
        s = s * num / den.clamp_min(1e-9)
    return s


def griffin_lim(magnitude: torch.Tensor, spec: AudioSpec, samples: int, iters: int = 48, seed: int = 0) -> torch.Tensor:
    """Waveform [..., samples] whose STFT magnitude approximates `magnitude` [..., n_fft/2+1, samples // hop].

    Fast Griffin-Lim (momentum 0.99), random initial phase from `seed`.
    """
    shape = magnitude.shape
    mag = magnitude.reshape(-1, *shape[-2:]).float()
    mag = torch.cat([mag, mag[..., -1:]], dim=-1)  # the centred STFT's last frame (dropped by `stft`)
    window = _window(spec, mag.device)
    gen = torch.Generator().manual_seed(seed)
    angles = torch.exp(2j * math.pi * torch.rand(mag.shape, generator=gen)).to(mag.device)
    prev = torch.zeros_like(angles)
    wave = torch.zeros(mag.shape[0], samples, device=mag.device)
    for _ in range(iters):
        wave = torch.istft(mag * angles, spec.n_fft, spec.hop, window=window, center=True, length=samples)
        rebuilt = torch.stft(wave, spec.n_fft, spec.hop, window=window, center=True, return_complex=True)
        fast = rebuilt - 0.99 * prev
        prev = rebuilt
        angles = fast / fast.abs().clamp_min(1e-8)
    wave = torch.istft(mag * angles, spec.n_fft, spec.hop, window=window, center=True, length=samples)
    return wave.reshape(*shape[:-2], samples)


def mel_to_waveform(mel: torch.Tensor, spec: AudioSpec, iters: int = 48, seed: int = 0) -> torch.Tensor:
    """The vocoder: magnitude mel [..., n_mels, T] -> waveform [..., T * hop] in [-1, 1]."""
    wave = griffin_lim(mel_to_linear(mel, spec), spec, mel.shape[-1] * spec.hop, iters, seed)
    return wave.clamp(-1.0, 1.0)


# ------------------------------------------------------------------------------------------------
# Audio latent: PCA of log-mel blocks
# ------------------------------------------------------------------------------------------------


class AudioCodec:
    """Log-mel [B, n_mels, T] <-> whitened latents [B, C, T / bt, n_mels / bm] (PCA of bt x bm blocks).

    Fitted on training sounds; every component is standardised, so the flow's unit noise is equally loud in
    each. `encode_wave` / `decode_wave` add the mel front end and the Griffin-Lim vocoder.
    """

    def __init__(
        self,
        spec: AudioSpec,
        mean: torch.Tensor,
        basis: torch.Tensor,
        z_mean: torch.Tensor,
        z_std: torch.Tensor,
        block: tuple[int, int],
    ):
        self.spec = spec
        self.mean, self.basis = mean.float(), basis.float()  # [bt*bm], [bt*bm, C]
        self.z_mean, self.z_std = z_mean.float(), z_std.float()  # [C]
        self.block = (int(block[0]), int(block[1]))
        self.channels = int(basis.shape[1])
        bt, bm = self.block
        if spec.n_mels % bm or spec.mel_frames_per_video_frame % bt:
            raise ConfigError(
                f"codec block {self.block} must divide (mel frames per video frame, n_mels) = "
                f"({spec.mel_frames_per_video_frame}, {spec.n_mels})"
            )

    @property
    def latent_frames_per_video_frame(self) -> int:
        return self.spec.mel_frames_per_video_frame // self.block[0]

    @property
    def latent_bands(self) -> int:
        return self.spec.n_mels // self.block[1]

    def _blocks(self, logmel: torch.Tensor) -> torch.Tensor:
        b, m, t = logmel.shape
        bt, bm = self.block
        if m != self.spec.n_mels or t % bt:
            raise InputError(f"log-mel must be [B, {self.spec.n_mels}, T] with T a multiple of {bt}, got {(b, m, t)}")
        return logmel.reshape(b, m // bm, bm, t // bt, bt).permute(0, 3, 1, 4, 2).reshape(-1, bt * bm)

    @classmethod
    def fit(cls, logmel: torch.Tensor, spec: AudioSpec, channels: int, block: tuple[int, int]) -> AudioCodec:
        """PCA of the blocks of log-mel spectrograms [B, n_mels, T]."""
        bt, bm = block
        if channels > bt * bm:
            raise ConfigError(f"codec channels={channels} exceeds the block size {bt}x{bm}")
        probe = cls(spec, torch.zeros(bt * bm), torch.zeros(bt * bm, channels), torch.zeros(channels),
                    torch.ones(channels), block)  # fmt: skip
        x = probe._blocks(logmel.float()).double()
        mean = x.mean(0)
        _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
        basis = vh[:channels].T.contiguous()
        basis = basis * torch.where(basis.sum(0) < 0, -1.0, 1.0)  # deterministic signs
        z = (x - mean) @ basis
        return cls(spec, mean, basis, z.mean(0), z.std(0).clamp_min(1e-6), block)

    def encode(self, logmel: torch.Tensor) -> torch.Tensor:
        """Log-mel [B, n_mels, T] -> latents [B, C, T / bt, n_mels / bm]."""
        b, m, t = logmel.shape
        bt, bm = self.block
        z = ((self._blocks(logmel.float()) - self.mean) @ self.basis - self.z_mean) / self.z_std
        return z.reshape(b, t // bt, m // bm, self.channels).permute(0, 3, 1, 2).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, T', M'] -> log-mel [B, n_mels, T' * bt]."""
        if latents.dim() != 4 or latents.shape[1] != self.channels or latents.shape[3] != self.latent_bands:
            raise InputError(
                f"latents must be [B, {self.channels}, T, {self.latent_bands}], got {tuple(latents.shape)}"
            )
        b, c, t, m = latents.shape
        bt, bm = self.block
        z = latents.float().permute(0, 2, 3, 1).reshape(-1, c) * self.z_std + self.z_mean
        x = z @ self.basis.T + self.mean
        return x.reshape(b, t, m, bt, bm).permute(0, 2, 4, 1, 3).reshape(b, m * bm, t * bt)

    def encode_wave(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveforms [B, samples] -> latents."""
        return self.encode(log_mel(wave, self.spec))

    def decode_wave(self, latents: torch.Tensor, iters: int = 48, seed: int = 0) -> torch.Tensor:
        """Latents -> waveforms [B, T * hop] in [-1, 1] (through the Griffin-Lim vocoder)."""
        mel = (self.decode(latents).exp() - LOG_FLOOR).clamp_min(0.0)
        return mel_to_waveform(mel, self.spec, iters, seed)

    def save(self, directory: str | Path) -> dict[str, Any]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"mean": self.mean, "basis": self.basis, "z_mean": self.z_mean, "z_std": self.z_std,
                   "block": torch.tensor(self.block)}  # fmt: skip
        save_tensors(tensors, directory / CODEC_WEIGHTS)
        return {"kind": "pca-logmel", "weights": CODEC_WEIGHTS, "spec": self.spec.to_dict()}

    @classmethod
    def load(cls, directory: str | Path, spec: AudioSpec) -> AudioCodec:
        path = Path(directory) / CODEC_WEIGHTS
        try:
            s = load_file(str(path))
        except OSError as exc:
            raise CheckpointError(f"cannot load the audio codec {str(path)!r}: {exc}") from None
        block = tuple(int(v) for v in s["block"].tolist())
        return cls(spec, s["mean"], s["basis"], s["z_mean"], s["z_std"], (block[0], block[1]))
