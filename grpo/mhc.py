"""Manifold-constrained hyper-connections (mHC): is the constraint still holding after an update?

DeepSeek-V4 widens the residual stream into ``hc_mult`` streams, ``(B, T, N, D)``. Each decoder
block has two ``DeepseekV4HyperConnection`` modules (``attn_hc`` before attention, ``ffn_hc`` before
the MoE); each computes, per token, a mixing matrix ``comb`` (N, N) that carries the N residual
streams into the next N. The architecture keeps it doubly stochastic (rows and columns summing to
1) by Sinkhorn-Knopp normalisation, ``hc_sinkhorn_iters`` rounds ending on the columns, so that the
residual map stays non-expansive however deep the stack. ``DeepseekV4HyperHead`` (``hc_head``)
collapses the N streams into one before the final norm.

Sinkhorn with a fixed number of rounds reaches the manifold only approximately: the last
normalisation makes the column sums 1 (up to ``hc_eps``), the row sums are off by however far the
iteration is from convergence, and that gap grows as the pre-Sinkhorn matrix gets more peaked, which
is what an RL update that sharpens ``fn``/``scale`` does. ``mhc_stats`` measures it, and the streams'
sizes, on real rollout tokens (padding excluded):

- ``mhc/comb_row_dev_max``, ``mhc/comb_col_dev_max``: the largest ``|sum - 1|`` of any row / column
  of any token's ``comb`` in any hyper-connection; ``mhc/comb_row_dev_mean``: the per-token largest
  row deviation, averaged over tokens and hyper-connections; ``mhc/layer{L}/comb_dev_max``: the
  largest row or column deviation in layer L (both hyper-connections).
- ``mhc/stream{i}/rms``: RMS over the hidden dimension of residual stream i where it enters
  ``hc_head``, averaged over tokens; ``mhc/layer{L}/stream_rms_max`` and ``.../stream_rms_min``:
  the largest and smallest stream RMS entering layer L; ``mhc/stream_rms_ratio_max``: the largest
  max/min ratio over layers (streams collapsing onto one another or one stream blowing up).

The trainer calls it once per step, after the update, on the step's first micro-batch (one
forward of the decoder without gradients, at most ``train.token_budget`` tokens), for policies
that have hyper-connections; ``has_mhc`` says whether one does.
"""

from __future__ import annotations

from typing import Self

import torch
from torch import Tensor, nn

HYPER_CONNECTIONS = ("DeepseekV4HyperConnection",)
HYPER_HEADS = ("DeepseekV4HyperHead",)


def has_mhc(model: nn.Module) -> bool:
    """Whether ``model`` (transformers or peft) has mHC residual streams."""
    return any(type(m).__name__ in HYPER_CONNECTIONS for m in model.modules())


def comb_deviation(comb: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token largest ``|row sum - 1|`` and ``|column sum - 1|`` of mixing matrices.

    comb (..., N, N) -> (...,), (...,).

    >>> rows, cols = comb_deviation(torch.tensor([[0.5, 0.5], [0.25, 0.75]]))
    >>> float(rows), float(cols)
    (0.0, 0.25)
    """
    rows = (comb.sum(-1) - 1).abs().amax(-1)
    cols = (comb.sum(-2) - 1).abs().amax(-1)
    return rows, cols


def stream_rms(streams: Tensor) -> Tensor:
    """RMS over the hidden dimension of each stream: (B, T, N, D) -> (B, T, N)."""
    return streams.float().pow(2).mean(-1).sqrt()


class MhcProbe:
    """While active, forward hooks collect ``comb`` deviations and stream RMS over the tokens
    where ``valid`` (B, T) is True, per hyper-connection and at the hyper-head."""

    def __init__(self, model: nn.Module, valid: Tensor):
        self.valid = valid.bool()
        self.hcs = [(n, m) for n, m in model.named_modules()
                    if type(m).__name__ in HYPER_CONNECTIONS]
        self.heads = [m for m in model.modules() if type(m).__name__ in HYPER_HEADS]
        self.dev: list[tuple[str, Tensor, Tensor]] = []  # (module name, rows (M,), cols (M,))
        self.rms: list[tuple[str, Tensor]] = []  # (module name, (M, N))
        self.head_rms: Tensor | None = None  # (M, N)
        self._handles: list = []

    def _hc_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: tuple) -> None:
            streams, (_, comb, _) = args[0], output  # (B, T, N, D), comb (B, T, N, N)
            v = self.valid.to(comb.device)
            rows, cols = comb_deviation(comb.detach().float())
            self.dev.append((name, rows[v], cols[v]))
            self.rms.append((name, stream_rms(streams.detach())[v]))

        return hook

    def _head_hook(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self.head_rms = stream_rms(args[0].detach())[self.valid.to(output.device)]

    def __enter__(self) -> Self:
        self._handles = [m.register_forward_hook(self._hc_hook(n)) for n, m in self.hcs]
        self._handles += [m.register_forward_hook(self._head_hook) for m in self.heads]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def metrics(self) -> dict[str, float]:
        """The ``mhc/...`` metrics of the module docstring."""
        out: dict[str, float] = {}
        if not self.dev:
            return out
        out["mhc/comb_row_dev_max"] = max(float(r.max()) for _, r, _ in self.dev)
        out["mhc/comb_col_dev_max"] = max(float(c.max()) for _, _, c in self.dev)
        out["mhc/comb_row_dev_mean"] = sum(float(r.mean()) for _, r, _ in self.dev) / len(self.dev)
        for name, rows, cols in self.dev:
            key = f"mhc/layer{_layer(name)}/comb_dev_max"
            out[key] = max(out.get(key, 0.0), float(rows.max()), float(cols.max()))
        ratios = []
        for name, rms in self.rms:
            if not name.endswith("attn_hc"):  # a layer's input is what enters its attn_hc
                continue
            per_stream = rms.mean(0)  # (N,)
            layer = _layer(name)
            out[f"mhc/layer{layer}/stream_rms_max"] = float(per_stream.max())
            out[f"mhc/layer{layer}/stream_rms_min"] = float(per_stream.min())
            ratios.append(float(per_stream.max() / per_stream.min().clamp_min(1e-30)))
        if ratios:
            out["mhc/stream_rms_ratio_max"] = max(ratios)
        if self.head_rms is not None:
            for i, value in enumerate(self.head_rms.mean(0).tolist()):
                out[f"mhc/stream{i}/rms"] = value
        return out


def _layer(module_name: str) -> int:
    """The decoder layer index in a module name such as ``model.layers.3.ffn_hc``."""
    parts = module_name.split(".")
    return int(parts[parts.index("layers") + 1])


@torch.no_grad()
def mhc_stats(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> dict[str, float]:
    """The ``mhc/...`` metrics of one decoder forward over right-padded rows (B, T)."""
    from grpo.logprobs import split_model

    decoder, _ = split_model(model)
    with MhcProbe(model, attention_mask.bool()) as probe:
        decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return probe.metrics()
