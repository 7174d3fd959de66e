"""Secure aggregation, simulated exactly: fixed-point encoding, pairwise masks, dropouts.

Secure aggregation (Bonawitz et al. 2017; SecAgg+, Bell et al. 2020) lets the
server learn only the sum of the clients' messages. Each client encodes its
message as integers, adds pairwise masks that cancel in the sum, and sends the
result in the ring ``Z_{2^bits}``; the server adds what it receives and, for
clients that dropped out after masking, removes the masks they shared with
the survivors (the protocol recovers those pair secrets from the survivors'
secret shares). What a researcher simulating it needs to see, and what
:func:`secure_aggregator` reproduces bit for bit, is:

* **fixed-point encoding**: each coordinate of a client's weighted message
  ``w_i * delta_i`` is clipped to ``[-clip, clip]`` and scaled by ``s =
  L / clip`` with ``L = floor((2^(bits-1) - 1) / num_summands)``, then rounded
  stochastically (``floor(x s + u)``, ``u ~ U[0, 1)``: unbiased) to an integer
  in ``[-L, L]``; so ``num_summands`` clients can never overflow, and a
  smaller ``num_summands`` buys resolution at the risk of wrap-around;
* **the modular sum**: messages are reduced mod ``2^bits`` and summed in the
  ring; a coordinate whose true sum leaves ``[-2^(bits-1), 2^(bits-1))``
  wraps around, and is counted (``num_overflow``);
* **pairwise masks**: client ``p`` of the cohort shares a mask with the
  clients ``p +- 1, ..., p +- h`` (cohort positions, cyclically: SecAgg+'s
  sparse graph, ``2h`` neighbours, ``h = ceil(neighbours / 2)``); the mask of
  a pair is a pseudorandom stream seeded by both clients' per-round keys
  (each ``fold_in(round key, client id)``), added by one and subtracted by
  the other, so the masks cancel exactly in the sum;
* **dropouts**: each participating client drops out after masking with
  probability ``dropout``; the server's recovery removes the masks the
  survivors shared with them, and the recovered sum equals the survivors'
  plain quantized sum exactly;
* **bits sent**: ``bits`` per coordinate plus 32 for the weight, per client.

The masked messages are computed client by client (:func:`mask_messages`) and
the server's side (:func:`unmask_sum`) receives only their sum and the
recovered masks of the dropped clients' pairs. The pseudorandom generator is a
counter-based integer hash (simulation-grade, not cryptographic): the masks
are uniform for the statistics of a simulation, not secure against an
attacker. The self-masks of the double-masking protocol and the key
agreement and secret-sharing messages are not simulated (they change
neither the sum nor the clients' message bits).

The aggregator keeps the cohort's messages stacked (``combine``), like the
robust aggregators; it wraps a streaming aggregator (mean, the DP
aggregators) whose ``finalize`` then runs on the decoded sum. Central DP
after secure aggregation therefore works as without it, with one change the
accounting must see: rounding moves a clipped update by up to ``sqrt(d) /
s``, so the sensitivity of the decoded sum is ``C + sqrt(d) / s``
(:func:`rounding_sensitivity`).

References:
  Bonawitz et al. "Practical Secure Aggregation for Privacy-Preserving
  Machine Learning", CCS 2017.
  Bell, Bonawitz, Gascon, Lepoint, Raykova. "Secure Single-Server
  Aggregation with (Poly)Logarithmic Overhead", CCS 2020.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fedjax_lite._validate import check_int
from fedjax_lite.aggregation import Aggregator, PerClient, inner_aggregator

# Bits sent for a client's weight (one 32-bit secure-sum coordinate).
WEIGHT_BITS = 32
_MIX = (0x85EBCA6B, 0xC2B2AE35, 0x9E3779B9)


class SecAggConfig(NamedTuple):
  """The encoding of :func:`secure_aggregator` (see the module docstring).

  Attributes:
    bits: the ring ``Z_{2^bits}``, 2 to 32.
    clip: the per-coordinate bound on a client's weighted message.
    num_summands: the clients the range is sized for (``None``: the cohort).
    dropout: probability that a participant drops out after masking.
    neighbours: masking-graph degree (``None``: ``2 ceil(log2 K)``).
  """

  bits: int
  clip: float
  num_summands: int | None
  dropout: float
  neighbours: int | None

  def levels(self, cohort: int) -> int:
    """``L``: the largest integer one client sends, for a cohort of ``cohort`` slots."""
    n = cohort if self.num_summands is None else self.num_summands
    return max(((1 << (self.bits - 1)) - 1) // n, 1)

  def scale(self, cohort: int) -> float:
    """``s = L / clip``: encoded integers per unit of the message."""
    return self.levels(cohort) / self.clip


def rounding_sensitivity(config: SecAggConfig, cohort: int, dim: int) -> float:
  """The most stochastic rounding can move one client's decoded message (L2 norm).

  Every coordinate moves by less than ``1 / s``, so a message of L2 norm at
  most ``C`` decodes to one of norm less than ``C + sqrt(dim) / s``; a DP
  guarantee on the decoded sum must use that sensitivity.

  Args:
    config: the encoding.
    cohort: cohort slots ``K`` (sets the default ``num_summands``).
    dim: the message's number of coordinates.

  Returns:
    ``sqrt(dim) / s``.
  """
  return math.sqrt(dim) / config.scale(cohort)


def _mix(x: Any) -> Any:
  """A 32-bit integer finalizer (murmur3's): a bijection of ``uint32`` that mixes bits."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(_MIX[0])
  x = x ^ (x >> 13)
  x = x * jnp.uint32(_MIX[1])
  return x ^ (x >> 16)


def mask_stream(seed: Any, dim: int) -> Any:
  """A pseudorandom ``uint32[..., dim]`` stream from ``uint32[..., 2]`` seeds (counter mode).

  Args:
    seed: ``uint32[..., 2]``.
    dim: the stream's length.

  Returns:
    ``uint32[..., dim]``.
  """
  counter = jnp.arange(dim, dtype=jnp.uint32) * jnp.uint32(_MIX[2])
  return _mix(counter ^ seed[..., :1]) + seed[..., 1:2]


def uniform_stream(seed: Any, dim: int) -> Any:
  """``float32[..., dim]`` uniform on ``[0, 1)`` (24 bits) from :func:`mask_stream`.

  Args:
    seed: ``uint32[..., 2]``.
    dim: the stream's length.

  Returns:
    ``float32[..., dim]``.
  """
  return (mask_stream(seed, dim) >> 8).astype(jnp.float32) * jnp.float32(2.0 ** -24)


def _pair_seed(keys_bits: Any, other: Any, offset: int) -> Any:
  """The seed of the pair (p, p + offset): symmetric in the two clients' key bits."""
  return _mix(keys_bits ^ other ^ jnp.uint32(offset * _MIX[2] & 0xFFFFFFFF))


def mask_messages(encoded: Any, key_bits: Any, active: Any, survived: Any, num_offsets: int,
                  ring_mask: Any) -> tuple[Any, Any]:
  """Every client's masked message, and the pair masks the server recovers for dropouts.

  Client ``p`` adds ``G(p, p+o)`` and subtracts ``G(p-o, p)`` for each offset
  ``o = 1..num_offsets`` whose pair is active (both clients participate).
  The masks a survivor shared with a dropped client are what the protocol
  reveals to the server (from the survivors' shares of the dropped client's
  seeds); their sum is returned separately, for :func:`unmask_sum`.

  Args:
    encoded: ``uint32[K, d]``, the clients' encoded messages in the ring.
    key_bits: ``uint32[K, 2]``, each client's per-round key bits.
    active: ``bool[K]``, the participants.
    survived: ``bool[K]``, the participants whose message reaches the server.
    num_offsets: ``h``.
    ring_mask: ``2^bits - 1`` as ``uint32``.

  Returns:
    ``(masked uint32[K, d], recovered uint32[d])``: the masked messages, and
    the sum over survivors ``p`` of their mask terms with dropped partners
    (``+G(p, p+o)`` or ``-G(p-o, p)``), mod ``2^32``.
  """
  dim = encoded.shape[1]
  if num_offsets == 0:
    return encoded & ring_mask, jnp.zeros((dim,), jnp.uint32)
  dropped = active & ~survived
  offsets = range(1, num_offsets + 1)
  # Per offset o and client p: the seed of the pair (p, p + o) and whether it is
  # active; the pair (p - o, p) is the same, rolled by o. Only these [h, K]
  # tables are rolled; the streams are generated where they are used.
  forward = jnp.stack([_pair_seed(key_bits, jnp.roll(key_bits, -o, axis=0), o)
                       for o in offsets])
  live = jnp.stack([active & jnp.roll(active, -o) for o in offsets])
  backward = jnp.stack([jnp.roll(forward[i], o, axis=0) for i, o in enumerate(offsets)])
  live_back = jnp.stack([jnp.roll(live[i], o) for i, o in enumerate(offsets)])
  g_forward = jnp.where(live[..., None], mask_stream(forward, dim), jnp.uint32(0))
  g_backward = jnp.where(live_back[..., None], mask_stream(backward, dim), jnp.uint32(0))
  masked = encoded + jnp.sum(g_forward, axis=0, dtype=jnp.uint32) \
      - jnp.sum(g_backward, axis=0, dtype=jnp.uint32)
  # Survivor p's term +G(p, p+o) when p + o dropped; survivor p + o's term
  # -G(p, p+o) when p dropped: one weighted sum over the pairs (weights 1, -1, 0).
  plus = jnp.stack([survived & jnp.roll(dropped, -o) for o in offsets])
  minus = jnp.stack([dropped & jnp.roll(survived, -o) for o in offsets])
  weight = plus.astype(jnp.uint32) - minus.astype(jnp.uint32)  # -1 is 2^32 - 1
  recovered = jnp.sum(weight[..., None] * g_forward, axis=(0, 1), dtype=jnp.uint32)
  return masked & ring_mask, recovered


def unmask_sum(masked_sum: Any, recovered: Any, ring_mask: Any, bits: int) -> Any:
  """The server's side: the survivors' plain sum from their masked sum, as signed integers.

  Args:
    masked_sum: ``uint32[d]``, the sum of the survivors' masked messages.
    recovered: ``uint32[d]`` from :func:`mask_messages`.
    ring_mask: ``2^bits - 1``.
    bits: the ring's bits.

  Returns:
    ``int32[d]``: the sum in ``[-2^(bits-1), 2^(bits-1))`` (two's complement).
  """
  plain = (masked_sum - recovered) & ring_mask
  if bits == 32:
    return jax.lax.bitcast_convert_type(plain, jnp.int32)
  half = jnp.uint32(1 << (bits - 1))
  return jnp.where(plain >= half, plain.astype(jnp.int32) - (1 << bits), plain.astype(jnp.int32))


def num_offsets(cohort: int, neighbours: int | None = None) -> int:
  """``h``: each client shares masks with the ``h`` cohort positions after it and before it.

  Args:
    cohort: cohort slots ``K``.
    neighbours: the masking graph's degree (default ``2 ceil(log2 K)``).

  Returns:
    ``min(ceil(degree / 2), K - 1)``.
  """
  degree = neighbours or 2 * max(math.ceil(math.log2(max(cohort, 2))), 1)
  return min(math.ceil(degree / 2), max(cohort - 1, 0))


def secure_sum(encoded: Any, key_bits: Any, active: Any, survived: Any, *, bits: int,
               neighbours: int | None = None) -> Any:
  """The survivors' sum of integer messages, run through the masking protocol.

  Args:
    encoded: ``int32[K, d]``, each client's message in ``[-2^(bits-1),
      2^(bits-1))`` (zero for non-participants).
    key_bits: ``uint32[K, 2]``, each client's per-round key bits.
    active: ``bool[K]``: the clients that mask (the participants).
    survived: ``bool[K]``: the participants whose masked message reaches
      the server (the others dropped out after masking).
    bits: the ring ``Z_{2^bits}``.
    neighbours: the masking graph's degree (:func:`num_offsets`).

  Returns:
    ``int32[d]``: ``sum`` of the survivors' messages reduced to
    ``[-2^(bits-1), 2^(bits-1))``, which equals their plain sum unless it
    wrapped around.
  """
  ring_mask = jnp.uint32((1 << bits) - 1)
  ring = jax.lax.bitcast_convert_type(encoded, jnp.uint32) & ring_mask
  masked, recovered = mask_messages(ring, key_bits, active, survived,
                                    num_offsets(encoded.shape[0], neighbours), ring_mask)
  # The server's side: the survivors' masked messages, summed, and the recovered masks.
  masked_sum = jnp.sum(jnp.where(survived[:, None], masked, 0), axis=0, dtype=jnp.uint32)
  return unmask_sum(masked_sum, recovered, ring_mask, bits)


def secure_aggregator(inner: Aggregator | None = None, *, bits: int = 16, clip: float = 1.0,
                      num_summands: int | None = None, dropout: float = 0.0,
                      neighbours: int | None = None) -> Aggregator:
  """Secure aggregation of another aggregator's per-client messages.

  ``inner.per_client`` runs first (e.g. DP clipping); each client's weighted
  message ``w * delta`` is encoded, masked and summed in ``Z_{2^bits}`` as the
  module docstring describes; the decoded survivors' sum and their total
  weight go to ``inner.finalize`` (e.g. the mean, or central DP noise).

  Args:
    inner: a streaming aggregator (default: the example-weighted mean). One
      that needs every client's update (median, trimmed mean, Krum) is
      refused: secure aggregation reveals only the sum.
    bits: ``2 <= bits <= 32``, the ring's size.
    clip: per-coordinate bound of a client's weighted message (``> 0``);
      larger coordinates are clipped (counted).
    num_summands: the clients the range is sized for (default: the cohort's
      slots ``K``, so no sum can overflow).
    dropout: probability in ``[0, 1)`` that a participant drops out after
      masking (its mask pairs are recovered).
    neighbours: masking-graph degree (default ``2 ceil(log2 K)``; at least 2).

  Returns:
    An :class:`~fedjax_lite.Aggregator` with ``combine``; its state is the
    inner one. Metrics (``aggregator/...``): the inner ones, and
    ``secagg_bits_per_client``, ``secagg_bits_sent`` (all participants),
    ``num_overflow`` (coordinates of the sum that wrapped around),
    ``num_secagg_dropped``, ``secagg_clipped_fraction``, and per client
    ``secagg_dropped``.

  Raises:
    ValueError: for arguments out of range or an inner aggregator with
      ``combine``.
  """
  inner = inner_aggregator(inner, "secure_aggregator")
  if inner.combine is not None:
    raise ValueError("secure_aggregator: the inner aggregator needs every client's update "
                     "(median, trimmed mean, Krum), and secure aggregation reveals only their "
                     "sum; use the mean or a DP aggregator.")
  check_int("bits", bits, minimum=2)
  if bits > 32:
    raise ValueError(f"`bits` must be at most 32 (the ring is held in uint32); got {bits}.")
  if not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
    raise ValueError(f"`clip` must be a positive number; got {clip!r}.")
  if num_summands is not None:
    check_int("num_summands", num_summands, minimum=1)
  if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
    raise ValueError(f"`dropout` must be a probability in [0, 1); got {dropout!r}.")
  if neighbours is not None:
    check_int("neighbours", neighbours, minimum=2)
  config = SecAggConfig(bits, float(clip), num_summands, float(dropout), neighbours)
  # The message's flat layout, seen when per_client is traced (before combine).
  layout: dict[str, Any] = {}

  def encode(message, seed, levels, scale):
    """A client's side: clip, scale, round stochastically (unbiased) to [-L, L]."""
    clipped = jnp.clip(message, -clip, clip)
    u = uniform_stream(seed, message.shape[-1])
    return jnp.clip(jnp.floor(clipped * scale + u), -levels, levels).astype(jnp.int32)

  def per_client(delta, weight, state, key):
    delta, weight, stats = inner.per_client(delta, weight, state, key)
    flat, layout["unravel"] = ravel_pytree(delta)
    message = flat.astype(jnp.float32) * weight
    key_bits_key, round_key, drop_key = jax.random.split(key, 3)
    payload = {"message": message,
               # the client's per-round key bits: what its pair seeds come from
               "key": jax.random.bits(key_bits_key, (2,), jnp.uint32),
               "round": jax.random.bits(round_key, (2,), jnp.uint32),
               "drop": jax.random.uniform(drop_key) < config.dropout}
    return payload, weight, stats

  def combine(payload, weights, stats, state, key):
    k, dim = payload["message"].shape
    levels, scale = config.levels(k), config.scale(k)
    active = weights > 0
    # Each client's side: encode, reduce into the ring, mask.
    message = payload["message"]
    encoded = encode(message, payload["round"], levels, scale)
    encoded = jnp.where(active[:, None], encoded, 0)
    dropped = active & payload["drop"]
    survived = active & ~dropped
    total_int = secure_sum(encoded, payload["key"], active, survived, bits=bits,
                           neighbours=config.neighbours)
    # Simulation only (no server sees it): the true integer sum, to count wrap-arounds.
    true_sum = jnp.sum(jnp.where(survived[:, None], encoded, 0).astype(jnp.float32), axis=0)
    overflow = jnp.abs(total_int.astype(jnp.float32) - true_sum) >= 2.0 ** (bits - 1)
    total = layout["unravel"](total_int.astype(jnp.float32) / scale)
    total_weight = jnp.sum(jnp.where(survived, weights, 0.0))
    aggregate, new_state, metrics = inner.finalize(total, total_weight, stats, state, key)
    bits_per_client = dim * bits + WEIGHT_BITS
    participants = jnp.sum(active).astype(jnp.float32)
    clipped = jnp.sum((jnp.abs(message) > clip) & active[:, None])
    metrics = dict(metrics, secagg_bits_per_client=jnp.float32(bits_per_client),
                   secagg_bits_sent=participants * bits_per_client,
                   num_overflow=jnp.sum(overflow).astype(jnp.float32),
                   num_secagg_dropped=jnp.sum(dropped).astype(jnp.float32),
                   secagg_clipped_fraction=clipped / jnp.maximum(participants * dim, 1.0),
                   secagg_dropped=PerClient(dropped.astype(jnp.float32)))
    return aggregate, new_state, metrics

  def finalize(total, total_weight, stats, state, key):
    del total, total_weight, stats, state, key
    raise NotImplementedError("secure_aggregator aggregates through combine")

  return Aggregator(inner.init, per_client, finalize, combine)
