"""The per-round classifier: input dropout → adapter → BatchNorm1d(affine=False) → linear.

The adapter comes from the classifier registry (:mod:`alfm.classifiers`): none for the linear
probe, the reference's residual MLP for ``residual_adapter``. Matches the DropQuery paper's
reference code: AdamW, cross-entropy (optionally weighted per row, as the reference weights
label-propagation targets), early stop on the training loss, best weights kept. All randomness
(initialization, dropout masks, batch order) comes from an explicit generator, so a run is
reproducible on CPU.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alfm.classifiers import ADAPTER_SETTINGS, build_adapter, get_classifier
from alfm.config import Config, setting
from alfm.kernels import auto_chunk, device_generator, matmul_nt


@dataclass(frozen=True)
class ProbeConfig(Config):
    """The classifier and its training (defaults from the reference).

    ``batch_size`` is at least 2: BatchNorm needs two rows to normalize a batch. ``scale`` and
    ``init_alpha`` belong to ``residual_adapter``: with a classifier that does not read them,
    giving them (or a non-default value) is an error, not a no-op.
    """

    section = "probe"
    key_format = "probe.{}"

    dropout: float = setting(0.75, minimum=0, exclusiveMaximum=1, help="input dropout rate")
    lr: float = setting(1e-2, exclusiveMinimum=0, help="AdamW learning rate")
    weight_decay: float = setting(1e-2, minimum=0, help="AdamW weight decay")
    batch_size: int = setting(4096, minimum=2, help="training batch size")
    max_epochs: int = setting(400, minimum=1, help="epoch limit")
    patience: int = setting(20, minimum=1, help="epochs without improvement before stopping")
    min_delta: float = setting(1e-3, minimum=0, help="training-loss improvement that counts")
    classifier: str = setting(
        "linear", minLength=1, help="classifier name (alfm list classifiers) or module:Name"
    )
    scale: int = setting(4, minimum=1, help="residual_adapter: bottleneck width D // scale")
    init_alpha: float = setting(
        -2.0, help="residual_adapter: initial α of the mix σ(α)·mlp(x) + (1 − σ(α))·x"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            reads = get_classifier(self.classifier).settings
        except ValueError as err:
            raise ValueError(f"probe.classifier: {err}") from err
        defaults = {f.name: f.default for f in fields(self)}
        for name in ADAPTER_SETTINGS:
            if name not in reads and getattr(self, name) != defaults[name]:
                raise ValueError(self._inert(name))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeConfig:
        """Build from a mapping; unknown keys, and settings the classifier does not read, are
        errors."""
        config = super().from_dict(data)
        reads = get_classifier(config.classifier).settings
        for name in ADAPTER_SETTINGS:
            if name in data and name not in reads:
                raise ValueError(config._inert(name))
        return config

    def _inert(self, name: str) -> str:
        return f"probe.{name} has no effect with classifier {self.classifier!r}; remove it"


def _mask_bits(rate: float) -> int:
    """Random bits per mask entry: the fewest (1, 2, 4 or 8) that represent ``rate`` exactly."""
    for bits in (1, 2, 4, 8):
        if (rate * 2**bits).is_integer():
            return bits
    return 16


def dropout_scale(
    shape: tuple[int, ...], rate: float, generator: torch.Generator, device: torch.device
) -> Tensor:
    """Inverted-dropout multipliers, float32: 0 with probability ``rate``, else 1 / (1 − rate).

    Each entry compares a few random bits with a threshold: exact for rates that are multiples
    of 1/256 (the default 0.75 takes 2 bits, 32 entries per 64-bit random word), otherwise
    resolved to 1/65536. On the CPU, fields of up to 8 bits are expanded through a 256-row
    lookup table, one gather per byte. One float draw per entry would cost ~20× more generator
    work, and a boolean mask an extra slow type promotion: both dominated CPU dropout passes.
    """
    count = math.prod(shape)
    bits = _mask_bits(rate)
    per_word = 64 // bits
    words = torch.randint(
        -(2**63), 2**63 - 1, (-(-count // per_word),), dtype=torch.int64, generator=generator,
        device=device,
    )  # fmt: skip
    threshold, scale = round(rate * 2**bits), 1.0 / (1.0 - rate)
    if bits == 16:
        keep = words.view(torch.int16) >= threshold - 2**15
    elif device.type == "cuda":  # elementwise bit fields: faster there than a gather
        keep = bit_fields(words.view(torch.uint8), bits) >= threshold
    else:  # one gather per byte from a table of the multipliers of its fields
        byte_values = torch.arange(256, dtype=torch.uint8, device=device)
        table = (bit_fields(byte_values, bits) >= threshold).float().mul_(scale)
        scales = table.index_select(0, words.view(torch.uint8).int())
        return scales.view(-1)[:count].view(shape)
    return keep.float().mul_(scale).view(-1)[:count].view(shape)


def bit_fields(values: Tensor, bits: int) -> Tensor:
    """``(n, 8 // bits)`` unsigned ``bits``-wide fields of uint8 ``values``, lowest bits first."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=values.device)
    return (values.unsqueeze(1) >> shifts) & (2**bits - 1)


def keep_mask(
    shape: tuple[int, ...], rate: float, generator: torch.Generator, device: torch.device
) -> Tensor:
    """Boolean dropout mask, True with probability ``1 − rate``: the nonzero entries of
    :func:`dropout_scale` (same generator draws)."""
    return dropout_scale(shape, rate, generator, device) > 0


def stacked_dropout_scales(
    passes: int,
    rows: int,
    dim: int,
    rate: float,
    generator: torch.Generator,
    device: torch.device,
    workspace: Tensor | None = None,
) -> Tensor:
    """(passes, rows, dim) inverted-dropout multipliers for ``passes`` dropout passes at once.

    Same distribution as :func:`dropout_scale` (0 with probability ``rate``, else 1 / (1 − rate)),
    but when the keep probability is 1/2, 1/4, …, 1/256 (the default rate 0.75: 1/4) on the CPU,
    an entry is kept iff its bit is set in all of ``j`` random words (keep = 2^-j), and each byte
    of the AND expands to 8 multipliers through one 256-row table gather: half the gathers and no
    threshold compare of :func:`dropout_scale`'s 2-bit fields. Other rates and devices use
    :func:`dropout_scale`. The table path writes into ``workspace`` when given (see
    :func:`dropout_workspace`): reusing one buffer across blocks saves its page faults.
    """
    shape = (passes, rows, dim)
    keep = 1.0 - rate
    j = round(-math.log2(keep)) if keep > 0 else 0
    if device.type != "cpu" or not 1 <= j <= 8 or 2.0**-j != keep:
        return dropout_scale(shape, rate, generator, device)
    count = passes * rows * dim
    words = torch.randint(
        -(2**63), 2**63 - 1, (j, -(-count // 64)), dtype=torch.int64, generator=generator,
        device=device,
    )  # fmt: skip
    kept = words[0]
    for row in words[1:]:
        kept = kept.bitwise_and_(row)
    byte_values = torch.arange(256, dtype=torch.uint8, device=device)
    table = bit_fields(byte_values, 1).float().mul_(1.0 / keep)
    bytes_ = kept.view(torch.uint8).int()
    if workspace is None or workspace.numel() < 8 * bytes_.numel():
        scales = table.index_select(0, bytes_)
    else:
        scales = torch.index_select(
            table, 0, bytes_, out=workspace[: 8 * bytes_.numel()].view(-1, 8)
        )
    return scales.view(-1)[:count].view(shape)


def dropout_workspace(passes: int, rows: int, dim: int, device: torch.device) -> Tensor:
    """A float32 buffer :func:`stacked_dropout_scales` can reuse for any block of ≤ ``rows``."""
    return torch.empty(-(-passes * rows * dim // 64) * 64, device=device)


def _dropout(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Inverted dropout on float32 ``x`` with masks drawn from ``generator``."""
    if p == 0.0:
        return x
    return x * dropout_scale(x.shape, p, generator, x.device)


#: Bytes of one float32 row chunk in :meth:`Probe.map_chunks` on the CPU: small enough that a
#: chunk, its dropout multipliers and the masked copy stay in cache for the matrix product.
CPU_CACHE_BYTES = 8 * 2**20


class Probe(nn.Module):
    """Input dropout → adapter → BatchNorm1d(D, affine=False) → Linear(D, C).

    ``adapter`` (a module mapping (N, D) to (N, D), see :mod:`alfm.classifiers`) is None for the
    linear probe. Inference helpers work on any number of rows (chunked internally, float16
    inputs accepted) and always use the BatchNorm running statistics (eval mode).
    """

    def __init__(
        self, dim: int, num_classes: int, dropout: float = 0.75, adapter: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.adapter = adapter
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.linear = nn.Linear(dim, num_classes)
        #: Training losses per epoch and the (1-based) epoch whose weights were kept.
        self.loss_history: list[float] = []
        self.best_epoch = 0

    @property
    def num_classes(self) -> int:
        """Number of output classes C."""
        return self.linear.out_features

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Logits; input dropout is applied (with ``generator``) only in training mode."""
        if self.training and generator is not None:
            x = _dropout(x, self.dropout, generator)
        return self.linear(self.norm(self.adapt(x)))

    def adapt(self, x: Tensor) -> Tensor:
        """The adapter's output on (dropped-out) inputs ``x``: ``x`` itself for the linear probe."""
        return x if self.adapter is None else self.adapter(x)

    @torch.no_grad()
    def folded_linear(self) -> tuple[Tensor, Tensor]:
        """Eval-mode BatchNorm folded into the linear layer: logits = adapt(x) @ W'ᵀ + b' (so
        x @ W'ᵀ + b' for the linear probe)."""
        inv_std = (self.norm.running_var + self.norm.eps).rsqrt()
        weight = self.linear.weight * inv_std
        return weight, self.linear.bias - weight @ self.norm.running_mean

    def chunk_logits(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        p: float | None = None,
        folded: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Eval-mode logits of a float32 chunk; with ``generator``, input dropout (rate ``p``,
        default the probe's own) is applied first with masks drawn from it, then the adapter.
        ``folded`` may pass a precomputed :meth:`folded_linear`.
        """
        weight, bias = folded if folded is not None else self.folded_linear()
        rate = self.dropout if p is None else p
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        if generator is not None and rate != 0.0:
            x = x * dropout_scale(x.shape, rate, generator, x.device)
        return torch.addmm(bias, self.adapt(x), weight.T)

    @torch.no_grad()
    def map_chunks(
        self, x: Tensor, fn: Callable[[Tensor], Tensor], rows: Tensor | None = None
    ) -> Tensor:
        """``fn`` applied to float32 row chunks of ``x`` (or of ``x[rows]``, gathered chunk by
        chunk so the selection is never copied whole), results stacked along the first dimension.

        Lets strategies reduce per chunk (e.g. logits → score) so no (N, C) array is ever held.
        """
        n = x.shape[0] if rows is None else rows.numel()
        width = max(x.shape[1], self.num_classes)
        chunk = auto_chunk(width, x.device, 16)
        if x.device.type == "cpu":  # cache-sized chunks: ~1.5× faster dropout passes
            chunk = min(chunk, max(1, CPU_CACHE_BYTES // (4 * width)))
        out: Tensor | None = None
        for start in range(0, n, chunk):
            part = slice(start, start + chunk) if rows is None else rows[start : start + chunk]
            result = fn(x[part].float())
            if out is None:
                out = torch.empty((n, *result.shape[1:]), dtype=result.dtype, device=result.device)
            out[start : start + result.shape[0]] = result
        if out is None:  # no rows: the shape of fn's output on an empty chunk
            out = fn(x[:0].float())
        return out

    def embed(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """z: the standardized adapter output (BatchNorm running statistics, no dropout), what
        the last Linear sees, float32 (N, D); only for ``x[rows]`` when ``rows`` is given.
        """
        mean, std = self.norm.running_mean, (self.norm.running_var + self.norm.eps).sqrt()
        return self.map_chunks(x, lambda xc: (self.adapt(xc) - mean) / std, rows)

    def logits(self, x: Tensor) -> Tensor:
        """Clean (eval-mode, no dropout) logits, float32 (N, C)."""
        return self.map_chunks(x, self.chunk_logits)

    def predict_proba(self, x: Tensor) -> Tensor:
        """Class probabilities from a clean pass, float32 (N, C)."""
        return self.map_chunks(x, lambda xc: self.chunk_logits(xc).softmax(dim=1))

    def dropout_logits(
        self, x: Tensor, generator: torch.Generator, p: float | None = None
    ) -> Tensor:
        """Logits of one pass with input dropout active (rate ``p``, default the probe's own)."""
        gen = device_generator(generator, x.device)
        return self.map_chunks(x, lambda xc: self.chunk_logits(xc, gen, p))

    def dropout_pass_logits(
        self,
        x: Tensor,
        num_passes: int,
        generator: torch.Generator,
        p: float | None = None,
        folded: tuple[Tensor, Tensor] | None = None,
        workspace: Tensor | None = None,
    ) -> Tensor:
        """(num_passes, r, C) eval-mode logits of ``num_passes`` input-dropout passes (rate ``p``,
        default the probe's own) over a float32 chunk ``x`` (r, D), the adapter (if any) then one
        matrix product over all passes.

        Masks come from :func:`stacked_dropout_scales` (``generator`` on ``x``'s device), so
        they differ from ``num_passes`` calls of :meth:`chunk_logits`; same distribution. Keep
        ``num_passes · r · D`` cache-sized (see :func:`dropout_pass_rows`) and pass the same
        :func:`dropout_workspace` to every block.
        """
        weight, bias = folded if folded is not None else self.folded_linear()
        rate = self.dropout if p is None else p
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        rows, dim = x.shape
        if rate == 0.0:
            return matmul_nt(self.adapt(x), weight, bias).unsqueeze(0).repeat(num_passes, 1, 1)
        scales = stacked_dropout_scales(num_passes, rows, dim, rate, generator, x.device, workspace)
        masked = scales.mul_(x).view(num_passes * rows, dim)
        return matmul_nt(self.adapt(masked), weight, bias).view(num_passes, rows, -1)

    @torch.no_grad()
    def map_dropout_passes(
        self,
        x: Tensor,
        num_passes: int,
        generator: torch.Generator,
        fn: Callable[[Tensor, Tensor], Tensor],
        out: Tensor,
        p: float | None = None,
        block_passes: int | None = None,
    ) -> Tensor:
        """``out[rows] = fn(x[rows] (float32), their (num_passes, r, C) dropout-pass logits)``
        over cache-sized row blocks of ``x`` (sized for ``block_passes``, default
        ``num_passes``), and ``out``.

        The blocks form up to :data:`DROPOUT_STREAMS` contiguous streams; a single stream draws
        from ``generator`` itself, several from generators seeded by it (one draw each, in
        order). On the CPU, for at least :data:`THREADED_PASS_ENTRIES` multipliers, the streams
        run on ``torch.get_num_threads()`` Python threads with one intra-op thread each: no
        OpenMP barrier per small operation (which passive waits on a shared machine make costly)
        and the mask generators of the streams run in parallel. Either way, same results.
        """
        n, dim = x.shape
        folded = self.folded_linear()
        rows = dropout_pass_rows(block_passes or num_passes, dim)
        blocks = -(-n // rows)
        count = max(1, min(DROPOUT_STREAMS, blocks))
        bounds = [rows * (blocks * i // count) for i in range(count)] + [n]
        gen = device_generator(generator, x.device)
        if count == 1:
            gens = [gen]
        else:
            seeds = torch.randint(0, 2**62, (count,), generator=gen, device=gen.device).tolist()
            gens = [torch.Generator(device=x.device).manual_seed(int(seed)) for seed in seeds]

        def streams(indices: range) -> None:  # one multiplier buffer for all of them
            workspace = dropout_workspace(num_passes, rows, dim, x.device)
            for i in indices:
                for start in range(bounds[i], bounds[i + 1], rows):
                    stop = min(bounds[i + 1], start + rows)
                    xb = x[start:stop].float()
                    logits = self.dropout_pass_logits(xb, num_passes, gens[i], p, folded, workspace)
                    out[start:stop] = fn(xb, logits)

        threads_before = torch.get_num_threads()
        threads = min(threads_before, count)
        if x.device.type != "cpu" or threads == 1 or num_passes * n * dim < THREADED_PASS_ENTRIES:
            streams(range(count))
            return out
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(threads) as pool:  # worker w: streams w, w + threads, ...
                parts = [range(w, count, threads) for w in range(threads)]
                list(pool.map(streams, parts))  # list(): re-raises a stream's error
        finally:
            torch.set_num_threads(threads_before)
        return out


#: Most row streams :meth:`Probe.map_dropout_passes` splits a pool into. Each stream has its own
#: generator seeded from the caller's, so the masks (and scores) depend on the pool size alone,
#: not on how many threads run the streams.
DROPOUT_STREAMS = 8

#: Dropout passes of fewer multiplier entries (passes × N × D) run their streams one after the
#: other on torch's own threads: below that, OpenMP-parallel blocks are as fast (DropQuery on the
#: default grid's 8,000 × 1,280 pool: 0.05 s per query on OpenMP threads, 0.09 s on Python ones).
THREADED_PASS_ENTRIES = 2**28


def dropout_pass_rows(num_passes: int, dim: int) -> int:
    """Rows per :meth:`Probe.dropout_pass_logits` call whose multipliers fit the CPU cache
    budget :data:`CPU_CACHE_BYTES` (at least one)."""
    return max(1, CPU_CACHE_BYTES // (4 * dim * max(1, num_passes)))


#: Training problems with fewer feature entries than this run on one CPU thread: they are
#: latency-bound, and OpenMP fan-out costs more than it saves (50× slower on a busy 2-core box).
SINGLE_THREAD_ENTRIES = 2**21


@contextlib.contextmanager
def _cpu_threads(device: torch.device, entries: int) -> Iterator[None]:
    """Limit torch to one CPU thread while training a small problem on the CPU."""
    previous = torch.get_num_threads()
    if device.type != "cpu" or entries >= SINGLE_THREAD_ENTRIES or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_probe(dim: int, num_classes: int, config: ProbeConfig) -> Probe:
    """An untrained probe of ``config``'s classifier (PyTorch's default initialization), e.g. to
    load a saved state dict into."""
    adapter = build_adapter(config.classifier, dim, config.to_dict())
    return Probe(dim, num_classes, config.dropout, adapter)


def train_probe(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    config: ProbeConfig | None = None,
    generator: torch.Generator | None = None,
    weights: Tensor | None = None,
) -> Probe:
    """Train a fresh :class:`Probe` of ``config.classifier`` on ``features`` (N, D) with integer
    ``labels`` (N,), each row's cross-entropy weighted by ``weights`` (N,) when given.

    Full-batch (or ``batch_size`` mini-batches when N is larger) AdamW on the mean (weighted)
    cross-entropy on the features' device; stops when the epoch's training loss has not improved
    by ``min_delta`` for ``patience`` epochs and returns the end-of-epoch weights of the epoch
    with the lowest training loss (as a checkpoint monitoring the training loss would), in eval
    mode. With a single sample BatchNorm statistics cannot be estimated, so it is trained as
    identity. Every layer is initialized as PyTorch does by default, with draws from
    ``generator``.
    """
    config = config or ProbeConfig()
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, D) tensor, got {tuple(features.shape)}")
    if labels.shape != (features.shape[0],):
        raise ValueError(
            f"labels must have shape ({features.shape[0]},), got {tuple(labels.shape)}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    labels = labels.to(device=features.device, dtype=torch.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.unique().tolist()}")
    if weights is not None:
        if weights.shape != labels.shape:
            shape = tuple(weights.shape)
            raise ValueError(f"weights must have shape {tuple(labels.shape)}, got {shape}")
        weights = weights.to(device=features.device, dtype=torch.float32)
        if not (torch.isfinite(weights).all() and (weights >= 0).all()):
            raise ValueError("weights must be finite and non-negative")
    x = features.float()
    if not torch.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    n, dim = x.shape
    gen = device_generator(generator, x.device)
    probe = build_probe(dim, num_classes, config).to(x.device)
    bound = 1.0 / math.sqrt(dim)
    with torch.no_grad():
        if probe.adapter is not None:
            probe.adapter.reset_parameters(gen)
        probe.linear.weight.uniform_(-bound, bound, generator=gen)
        probe.linear.bias.uniform_(-bound, bound, generator=gen)
    with _cpu_threads(x.device, x.numel()):
        _fit(probe, x, labels, weights, config, gen)
    return probe.eval()


def _fit(
    probe: Probe,
    x: Tensor,
    labels: Tensor,
    weights: Tensor | None,
    config: ProbeConfig,
    gen: torch.Generator,
) -> None:
    """The training loop of :func:`train_probe`; leaves the best weights in ``probe``."""
    n = x.shape[0]
    optimizer = torch.optim.AdamW(
        probe.parameters(),
        lr=config.lr,
        weight_decay=config.weight_decay,
        fused=True if x.device.type == "cuda" else None,  # one kernel per step on the GPU
    )
    probe.train()
    if n < 2:
        probe.norm.eval()
    best_loss, ref_loss, waited = math.inf, math.inf, 0
    best_state = {name: value.clone() for name, value in probe.state_dict().items()}
    num_batches = math.ceil(n / config.batch_size)
    for _ in range(config.max_epochs):
        if num_batches == 1:
            batches = [slice(None)]
        else:  # near-equal batches, so none is a single sample BatchNorm cannot normalize
            order = torch.randperm(n, generator=gen, device=x.device)
            batches = torch.tensor_split(order, num_batches)
        total = 0.0
        for idx in batches:
            xb, yb = x[idx], labels[idx]
            if weights is None:
                loss = F.cross_entropy(probe(xb, gen), yb)
            else:
                loss = (F.cross_entropy(probe(xb, gen), yb, reduction="none") * weights[idx]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * yb.shape[0]
        epoch_loss = total / n
        probe.loss_history.append(epoch_loss)
        if epoch_loss < best_loss:
            best_loss, probe.best_epoch = epoch_loss, len(probe.loss_history)
            for name, value in probe.state_dict().items():
                best_state[name].copy_(value)
        if epoch_loss < ref_loss - config.min_delta:
            ref_loss, waited = epoch_loss, 0
        else:
            waited += 1
            if waited >= config.patience:
                break
    probe.load_state_dict(best_state)
