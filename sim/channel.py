"""Channel models of V2X links as pure, seeded functions: no sockets, no wall clock.

A :class:`Channel` takes packets in send order (time, size, sender and receiver positions) and
returns each packet's :class:`Fate`: delivered at a time or lost, and why. Everything random
comes from the numpy ``Generator`` it was given, so a run is reproducible.

Models, applied in this order:

* **range**: beyond ``max_range`` metres nothing arrives;
* **packet reception ratio vs distance** (``prr``): each MTU fragment is received with a
  probability that falls with distance. ``"80211p"`` and ``"cv2x"`` are logistic fits in the
  spirit of Sepulcre et al.'s analytical models (see docs/channel.md for the parameters);
  ``"pathloss"`` derives it from 3GPP TR 37.885 urban path loss, log-normal shadowing and an
  SNR threshold;
* **random loss**: Bernoulli per fragment, or Gilbert-Elliott burst loss with netem's
  parameters (p: good->bad, r: bad->good, 1-h: loss in bad, 1-k: loss in good);
* **fragmentation**: a message is ``ceil(size / mtu)`` datagrams and is lost if any is;
* **rate and queue**: serialisation at ``rate_bps`` through a FIFO; a message that would wait
  longer than ``queue_limit_s`` (or overflow ``queue_limit_bytes``) is dropped at the tail;
* **latency and jitter**: a base delay plus a random jitter (normal, exponential or Pareto);
  reordering happens naturally when jitter exceeds the spacing of packets;
* **pose noise**: the sender's pose as the receiver sees it, N(0, sigma) on x, y, z and yaw.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

__all__ = ["PRESETS", "Channel", "ChannelConfig", "Fate", "GilbertElliott", "noisy_pose", "preset", "prr"]


@dataclass(frozen=True)
class GilbertElliott:
    """netem's ``loss gemodel p r 1-h 1-k`` (all probabilities in 0..1)."""

    p: float = 0.01  # good -> bad
    r: float = 0.3  # bad -> good
    loss_bad: float = 1.0  # 1 - h
    loss_good: float = 0.0  # 1 - k

    @property
    def time_in_bad(self) -> float:
        return self.p / (self.p + self.r) if self.p + self.r > 0 else 0.0

    @property
    def mean_burst(self) -> float:
        return 1.0 / self.r if self.r > 0 else math.inf

    @property
    def loss_rate(self) -> float:
        pb = self.time_in_bad
        return pb * self.loss_bad + (1 - pb) * self.loss_good


@dataclass(frozen=True)
class ChannelConfig:
    name: str = "custom"
    rate_bps: float | None = None  # None: unlimited
    latency_s: float = 0.0
    jitter_s: float = 0.0
    jitter: str = "normal"  # normal (truncated at 0), exponential, pareto
    loss: float = 0.0  # Bernoulli per fragment
    burst: GilbertElliott | None = None
    prr: str | None = None  # None, "80211p", "cv2x", "pathloss"
    max_range: float | None = None
    mtu: int = 1472  # UDP payload per datagram
    queue_limit_s: float | None = 0.5
    queue_limit_bytes: int | None = None
    pose_sigma_xyz: float = 0.0
    pose_sigma_yaw_deg: float = 0.0
    frequency_ghz: float = 5.9
    tx_power_dbm: float = 23.0
    noise_dbm: float = -95.0
    snr_threshold_db: float = 5.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Fate:
    """What happened to one message."""

    seq: int
    sent_s: float
    size: int
    fragments: int
    distance: float
    delivered: bool
    delivered_s: float | None = None
    reason: str | None = None  # range, prr, loss, burst, queue

    def to_dict(self) -> dict:
        return asdict(self)


def _logistic(d: np.ndarray, d50: float, slope: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp((d - d50) / slope))


def prr(
    model: str,
    distance: np.ndarray | float,
    cfg: ChannelConfig | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Probability that one datagram is received at ``distance`` metres.

    ``80211p``: 50 % at 260 m, falling over ~45 m (a fit to the shape of Sepulcre et al.'s
    802.11p highway curves at 10 Hz, 300-byte packets); ``cv2x``: 50 % at 380 m (LTE-V2X mode 4
    reaches further at the same transmit power); ``pathloss``: the probability that the SNR from
    TR 37.885's urban LOS/NLOS path loss with log-normal shadowing clears a threshold.
    """
    d = np.maximum(np.asarray(distance, dtype=np.float64), 1.0)
    if model == "80211p":
        return _logistic(d, 260.0, 45.0)
    if model == "cv2x":
        return _logistic(d, 380.0, 60.0)
    if model == "pathloss":
        cfg = cfg or ChannelConfig()
        f = cfg.frequency_ghz
        p_los = np.minimum(1.0, 1.05 * np.exp(-0.0114 * d))
        los = 38.77 + 16.7 * np.log10(d) + 18.2 * np.log10(f)
        nlos = 36.85 + 30.0 * np.log10(d) + 18.9 * np.log10(f)
        margin_los = cfg.tx_power_dbm - los - cfg.noise_dbm - cfg.snr_threshold_db
        margin_nlos = cfg.tx_power_dbm - nlos - cfg.noise_dbm - cfg.snr_threshold_db
        from scipy.stats import norm

        return p_los * norm.cdf(margin_los / 3.0) + (1 - p_los) * norm.cdf(margin_nlos / 4.0)
    raise ValueError(f"unknown PRR model {model!r}: use 80211p, cv2x or pathloss")


def noisy_pose(world_from_sender: np.ndarray, cfg: ChannelConfig, rng: np.random.Generator) -> np.ndarray:
    """The sender's pose as the receiver sees it: N(0, sigma) on x, y, z and on yaw."""
    if cfg.pose_sigma_xyz <= 0 and cfg.pose_sigma_yaw_deg <= 0:
        return world_from_sender
    out = world_from_sender.copy()
    out[:3, 3] += rng.normal(0.0, cfg.pose_sigma_xyz, 3)
    a = np.radians(rng.normal(0.0, cfg.pose_sigma_yaw_deg))
    c, s = np.cos(a), np.sin(a)
    out[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ out[:3, :3]
    return out


@dataclass
class Channel:
    """One directed link with its queue and burst-loss state."""

    cfg: ChannelConfig
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    _free_at: float = 0.0
    _bad: bool = False
    _seq: int = 0
    _queue: list[tuple[float, int]] = field(default_factory=list)

    def _fragment_lost(self, n: int) -> tuple[bool, str | None]:
        cfg = self.cfg
        lost_any, why = False, None
        for _ in range(n):
            if cfg.burst is not None:
                ge = cfg.burst
                # state transition before each datagram, then loss in the current state
                self._bad = self.rng.random() < (1 - ge.r if self._bad else ge.p)
                if self.rng.random() < (ge.loss_bad if self._bad else ge.loss_good):
                    lost_any, why = True, "burst"
            if cfg.loss > 0 and self.rng.random() < cfg.loss:
                lost_any, why = True, why or "loss"
        return lost_any, why

    def _jitter(self) -> float:
        cfg = self.cfg
        if cfg.jitter_s <= 0:
            return 0.0
        if cfg.jitter == "normal":
            return abs(self.rng.normal(0.0, cfg.jitter_s))
        if cfg.jitter == "exponential":
            return self.rng.exponential(cfg.jitter_s)
        if cfg.jitter == "pareto":
            return cfg.jitter_s * self.rng.pareto(3.0)
        raise ValueError(f"unknown jitter distribution {cfg.jitter!r}")

    def send(self, t: float, size: int, distance: float = 0.0) -> Fate:
        """Fate of a message of ``size`` bytes sent at time ``t`` (seconds) over ``distance`` metres."""
        cfg = self.cfg
        self._seq += 1
        n = max(1, math.ceil(size / cfg.mtu))
        fate = Fate(self._seq, t, size, n, float(distance), False)
        if cfg.max_range is not None and distance > cfg.max_range:
            fate.reason = "range"
            return fate
        # queueing and serialisation: the link is busy until the previous message left
        start = max(t, self._free_at)
        if cfg.queue_limit_s is not None and start - t > cfg.queue_limit_s:
            fate.reason = "queue"
            return fate
        if cfg.queue_limit_bytes is not None:
            self._queue = [(end, s) for end, s in self._queue if end > t]
            if sum(s for _, s in self._queue) + size > cfg.queue_limit_bytes:
                fate.reason = "queue"
                return fate
        tx = size * 8 / cfg.rate_bps if cfg.rate_bps else 0.0
        self._free_at = start + tx
        self._queue.append((self._free_at, size))
        if cfg.prr is not None:
            p = float(prr(cfg.prr, distance, cfg))
            if (self.rng.random(n) >= p).any():
                fate.reason = "prr"
                return fate
        lost, why = self._fragment_lost(n)
        if lost:
            fate.reason = why
            return fate
        fate.delivered = True
        fate.delivered_s = self._free_at + cfg.latency_s + self._jitter()
        return fate


PRESETS: dict[str, ChannelConfig] = {
    "ideal": ChannelConfig("ideal", queue_limit_s=None),
    # 802.11p at its top rate: 27 Mbit/s on a 10 MHz channel, PRR falling with distance
    "dsrc": ChannelConfig(
        "dsrc", rate_bps=27e6, latency_s=0.002, jitter_s=0.001, prr="80211p", max_range=500.0
    ),
    # LTE-V2X PC5 mode 4: semi-persistent scheduling adds ~20-50 ms, longer reach
    "cv2x": ChannelConfig(
        "cv2x",
        rate_bps=20e6,
        latency_s=0.02,
        jitter_s=0.01,
        jitter="exponential",
        prr="cv2x",
        max_range=700.0,
    ),
    # the field's usual experimental setting (OpenCOOD / V2X-ViT wild setting, CoAlign)
    "opencood": ChannelConfig(
        "opencood", rate_bps=27e6, latency_s=0.1, max_range=70.0, pose_sigma_xyz=0.2, pose_sigma_yaw_deg=0.2
    ),
    # a crowded channel: a shared 3 Mbit/s, queueing, some loss
    "congested": ChannelConfig(
        "congested",
        rate_bps=3e6,
        latency_s=0.01,
        jitter_s=0.01,
        jitter="exponential",
        loss=0.02,
        prr="80211p",
        max_range=300.0,
        queue_limit_s=0.2,
    ),
    # bursty fading: mean burst 3 datagrams, ~5 % of time in the bad state
    "lossy-burst": ChannelConfig(
        "lossy-burst",
        rate_bps=27e6,
        latency_s=0.005,
        jitter_s=0.002,
        burst=GilbertElliott(p=0.015, r=0.3, loss_bad=1.0, loss_good=0.001),
        max_range=300.0,
    ),
}


def preset(name: str, **overrides) -> ChannelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown channel preset {name!r}: use one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
