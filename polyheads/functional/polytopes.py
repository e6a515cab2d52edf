"""Fixed classifiers from regular polytopes (seed 002, Pernici et al., "Maximally Compact and Separated
Features with Regular Polytope Networks") and from a Hadamard matrix (Hoffer et al., seed 002 ref. [2]).

Four kinds of K unit vertices in R^d, K = ``num_classes``:

========== ================================ ============================== ==========================
kind        vertices                         d (seed 002 Eq. 7)             φ (Eq. 10-12)
========== ================================ ============================== ==========================
simplex     Eq. 3, centred, normalised       K - 1                          arccos(-1/d)
orthoplex   ±e_i (Eq. 4)                     ⌈K/2⌉                          π/2
cube        {±1/√d}^d (Eq. 5)                ⌈log₂ K⌉                       arccos((d-2)/d)
hadamard    rows of Sylvester H_n / √n       n = 2^⌈log₂ K⌉                 π/2
========== ================================ ============================== ==========================

Eq. 7 lists its three rules in an order that does not match its "respectively"; the 9×9, 5×5 and
4×4 scatter-plot matrices of seed 002 Fig. 2 for MNIST's K = 10 settle it: simplex d = K - 1,
orthoplex d = ⌈K/2⌉, cube d = ⌈log₂ K⌉.

Which vertices, in which class order (deterministic; part of the checkpoint format):

- ``simplex``: class i < d is the centred, normalised e_i, class d is -(1, …, 1)/√d (closed form of
  Eq. 3 after the centroid shift). All K vertices are used.
- ``orthoplex``: classes 0..d-1 are +e_1..+e_d, classes d..K-1 are -e_1..-e_{K-d} (odd K drops -e_d).
- ``cube``: class i gets the binary code ``c(i) = ⊕_{b: bit b of i is 1} g_b`` (bit k of the code is
  coordinate k: 0 ↦ -1/√d, 1 ↦ +1/√d) for generators g_0, g_1, … of a linear code, so all codes are
  distinct and the first 2^j classes always form a group (their vertices sum to zero on every
  coordinate they use). The minimum
  Hamming distance h between the K codes is the code's minimum weight; the smallest angle is
  arccos((d - 2h)/d).

  * Eq. 7's d (K > 2^(d-1)): *any* K codes contain two at Hamming distance 1 (pigeonhole over the
    2^(d-1) pairs {c, c ⊕ e_1}), so the minimum angle is φ_c whatever the choice; the number of such
    closest pairs is at least d·(K - 2^(d-1)) (count the edges of the d-cube graph leaving the unused
    codes), attained exactly when the unused codes are pairwise non-adjacent. So the first 2^(d-1)
    classes are the even-weight codes (the demicube, pairwise >= 2 apart) and the rest odd ones:
    g_0..g_{d-2} are even, each the smallest integer farthest (Hamming) from the span so far, and
    g_{d-1} = e_1. For K = 10: five antipodal pairs, {0000, 1111}, {1100, 0011}, ...
  * a larger ``dim``: the lexicode with the largest minimum distance δ that still has ⌈log₂ K⌉
    generators (Conway & Sloane 1986: greedily taking the smallest vector at distance >= δ from all
    taken so far gives a linear code), searched from the Griesmer bound down. It reaches the best
    linear codes in the small cases we checked (K = 16 in d = 7: the Hamming code, h = 3; K = 10 in
    d = 8: the extended Hamming code, h = 4, cos <= 0).
  * the search runs over 2^p codes with p <= 20 (24 if K needs more bits); a wider ``dim`` is cut in
    near-equal blocks of p <= 20 coordinates that repeat the code (coordinate k carries bit k mod p).

- ``hadamard``: the first K rows of the Sylvester matrix H_n, n = 2^⌈log₂ K⌉, scaled by 1/√n.

A ``dim`` larger than Eq. 7's puts the simplex, orthoplex and Hadamard vertices in the first
coordinates and zeros in the rest (the regular simplex is already the best arrangement of K unit
vectors in any dimension; the orthoplex and Hadamard vertices keep their right angles); the cube
uses every coordinate (see above).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from .._checks import check_choice, check_int

__all__ = [
    "POLYTOPE_KINDS",
    "polytope_dim",
    "polytope_vertices",
    "polytope_angle",
    "polytope_min_angle",
    "polytope_capacity",
    "cube_codes",
]

POLYTOPE_KINDS: tuple[str, ...] = ("simplex", "orthoplex", "cube", "hadamard")

_RULES = {
    "simplex": "d = K - 1 (seed 002 Eq. 7): a simplex in R^d has d + 1 vertices",
    "orthoplex": "d = ceil(K / 2) (seed 002 Eq. 7): an orthoplex in R^d has 2d vertices",
    "cube": "d = ceil(log2 K) (seed 002 Eq. 7): a cube in R^d has 2^d vertices",
    "hadamard": "d = 2^ceil(log2 K) (Hoffer et al., seed 002 ref. [2]): K rows of a Sylvester Hadamard matrix of order d",
}

#: the cube's code is searched over at most 2^_GREEDY_BITS vectors (2^_GREEDY_MAX_BITS when K needs more bits)
_GREEDY_BITS = 20
_GREEDY_MAX_BITS = 24


def _kind(kind: str) -> str:
    return check_choice("kind", kind, POLYTOPE_KINDS)


def _num_classes(num_classes: int) -> int:
    k = check_int("num_classes", num_classes)
    if k < 2:
        raise ValueError(
            f"num_classes must be >= 2 for a polytope classifier (a single vertex separates nothing; "
            f"seed 002 Eq. 7 gives d = K - 1 = 0 for the simplex), got {k}"
        )
    return k


def _ceil_log2(k: int) -> int:
    return (k - 1).bit_length()


def polytope_dim(kind: str, num_classes: int) -> int:
    """The feature dimension d of the fixed classifier for K = ``num_classes`` classes (seed 002 Eq. 7).

    ``simplex``: K - 1; ``orthoplex``: ⌈K/2⌉; ``cube``: ⌈log₂ K⌉; ``hadamard``: 2^⌈log₂ K⌉ (the
    smallest Sylvester Hadamard order with K rows). Exact integer arithmetic (no float log).
    """
    kind, k = _kind(kind), _num_classes(num_classes)
    if kind == "simplex":
        return k - 1
    if kind == "orthoplex":
        return (k + 1) // 2
    if kind == "cube":
        return _ceil_log2(k)
    return 1 << _ceil_log2(k)


def polytope_capacity(kind: str, dim: int) -> int:
    """How many classes a ``kind`` classifier in R^``dim`` holds: d + 1, 2d, 2^d, or the largest power
    of two <= d (Sylvester order) for ``hadamard``."""
    kind = _kind(kind)
    d = check_int("dim", dim, minimum=1)
    if kind == "simplex":
        return d + 1
    if kind == "orthoplex":
        return 2 * d
    if kind == "cube":
        return 1 << d
    return 1 << (d.bit_length() - 1)


def _resolve_dim(kind: str, k: int, dim: int | None) -> tuple[int, int]:
    """(Eq. 7's d, the dimension used); the second must be >= the first."""
    need = polytope_dim(kind, k)
    if dim is None:
        return need, need
    d = check_int("dim", dim, minimum=1)
    if d < need:
        raise ValueError(
            f"dim={d} is too small for a {kind} classifier of num_classes={k}: it needs dim >= {need} "
            f"({_RULES[kind]}; dim={d} holds at most {polytope_capacity(kind, d)} classes)"
        )
    return need, d


def polytope_angle(kind: str, dim: int) -> float:
    """φ, the angle between a vertex and its connected vertices (seed 002 Eq. 10-12), in float64.

    ``simplex``: arccos(-1/d) (Eq. 10); ``orthoplex``: π/2 (Eq. 11); ``cube``: arccos((d-2)/d) (Eq. 12);
    ``hadamard``: π/2 (orthogonal rows). Evaluated as π/2 + arcsin(1/d) and 2 arcsin(1/√d), which
    equal the arccos forms but stay accurate where arccos is ill-conditioned (cube, large d).

    d = 1 (K = 2) is the segment: its two vertices subtend π for every kind (Eq. 11 assumes d >= 2).
    ``hadamard`` needs ``dim`` a power of two >= 2 (a Sylvester order).
    """
    kind = _kind(kind)
    d = check_int("dim", dim, minimum=1)
    if kind == "hadamard":
        if d < 2 or d & (d - 1):
            raise ValueError(f"dim must be a power of two >= 2 for kind='hadamard' (a Sylvester Hadamard order), got {d}")
        return math.pi / 2
    if d == 1:
        return math.pi
    if kind == "simplex":
        return math.pi / 2 + math.asin(1.0 / d)  # = arccos(-1/d)
    if kind == "orthoplex":
        return math.pi / 2
    return 2.0 * math.asin(1.0 / math.sqrt(d))  # = arccos((d-2)/d)


def polytope_min_angle(kind: str, num_classes: int, dim: int | None = None) -> float:
    """The smallest angle between two of the K vertices :func:`polytope_vertices` returns (closed form,
    float64): the φ that the margin m = φ of seed 002 Eq. 9 should push to.

    With Eq. 7's d (``dim=None``) this is :func:`polytope_angle` (Eq. 10-12) for K >= 3. K = 2 gives
    two antipodal vertices (π) for the simplex, orthoplex and cube. A larger ``dim`` keeps the simplex,
    orthoplex and Hadamard angles (zero padding) and widens the cube's: its codes are h >= 1 apart,
    φ = arccos((dim - 2h)/dim).
    """
    kind, k = _kind(kind), _num_classes(num_classes)
    need, d = _resolve_dim(kind, k, dim)
    if kind == "hadamard":
        return math.pi / 2
    if k == 2:
        return math.pi
    if kind == "simplex":
        return polytope_angle("simplex", need)
    if kind == "orthoplex":
        return math.pi / 2
    h = _cube_plan(k, d)[3]
    return 2.0 * math.asin(math.sqrt(h / d))  # = arccos((d - 2h)/d)


# ------------------------------------------------------------------------------------------- cube codes
def _weights(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(every integer 0..2^p-1 as int32, its Hamming weight as int8)."""
    index = torch.arange(1 << p, dtype=torch.int32)
    weight = torch.zeros(1 << p, dtype=torch.int8)
    for b in range(p):
        weight += ((index >> b) & 1).to(torch.int8)
    return index, weight


@functools.lru_cache(maxsize=64)
def _demicube_generators(p: int) -> tuple[tuple[int, ...], int]:
    """Generators for Eq. 7's d = p (K > 2^(p-1)): p-1 even-weight ones spanning the demicube, each the
    smallest integer farthest (Hamming) from the span so far, then e_0. Returns (generators, 1).

    The distance of every vector to the span is updated in O(2^p) per step:
    dist_{j+1}(v) = min(dist_j(v), dist_j(v ⊕ g_j)).
    """
    index, dist = _weights(p)
    dist = dist.masked_fill((dist & 1) == 1, -1)  # odd vectors are no candidates (v ⊕ g keeps parity)
    generators = []
    for _ in range(p - 1):
        g = int(torch.argmax(dist))  # the first maximum: the smallest such integer
        generators.append(g)
        dist = torch.minimum(dist, dist[index ^ g])
    return (*generators, 1), 1


@functools.lru_cache(maxsize=64)
def _lexicode_generators(p: int, nbits: int) -> tuple[tuple[int, ...], int]:
    """Generators of the lexicode of length p with the largest minimum distance δ that still has
    dimension >= ``nbits`` (Conway & Sloane 1986: the greedy code "take the smallest vector at distance
    >= δ from all taken so far" is linear, its basis found one smallest vector at a time).
    Returns (generators, the code's minimum Hamming weight)."""
    index, weight = _weights(p)
    # start at the Griesmer bound: a linear [p, k, δ] code needs p >= Σ_{i<k} ⌈δ / 2^i⌉
    top = max(delta for delta in range(1, p + 1) if sum(-(-delta // (1 << i)) for i in range(nbits)) <= p)
    for delta in range(top, 0, -1):
        dist, generators, minimum = weight, [], p
        for j in range(nbits):
            ok = dist >= delta
            g = int(torch.argmax(ok.to(torch.int8)))  # the smallest vector at distance >= δ
            if not bool(ok[g]):
                break
            generators.append(g)
            minimum = min(minimum, int(dist[g]))
            if j < nbits - 1:
                dist = torch.minimum(dist, dist[index ^ g])
        if len(generators) == nbits:
            return tuple(generators), minimum
    raise RuntimeError(f"no cube code of {nbits} bits in F_2^{p}")  # unreachable: δ = 1 always succeeds


@functools.lru_cache(maxsize=64)
def _cube_plan(k: int, d: int) -> tuple[tuple[int, ...], int, int, int]:
    """(generators, p, nbits, h): codes live in F_2^p, repeated cyclically over d >= p coordinates
    (coordinate j carries bit j mod p); h is the minimum Hamming distance between the K codes in the d
    coordinates. For d > 20 two cuts are tried (p = 20, and near-equal blocks) and the larger h kept."""
    nbits = _ceil_log2(k)
    blocks = -(-d // _GREEDY_BITS)
    widths = dict.fromkeys((max(min(d, _GREEDY_BITS), nbits), max(-(-d // blocks), nbits)))
    plans = [_cube_plan_for_width(k, d, nbits, p) for p in widths]
    return max(plans, key=lambda plan: plan[3])  # the first of equals: the widest search


def _cube_plan_for_width(k: int, d: int, nbits: int, p: int) -> tuple[tuple[int, ...], int, int, int]:
    if p <= _GREEDY_MAX_BITS:
        generators, h_p = _demicube_generators(p) if nbits == p else _lexicode_generators(p, nbits)
    else:  # astronomically many classes: an even-weight basis, then e_p (demicube first, as above)
        generators = tuple((1 << b) | (1 << (b + 1)) for b in range(p - 1)) + (1 << (p - 1),)
        h_p = 1
    if p == d:
        return generators, p, nbits, h_p
    # extended weight of a code word c: q·|c| + |c restricted to bits < r|, d = q·p + r
    q, r = divmod(d, p)
    if nbits > _GREEDY_MAX_BITS:
        return generators, p, nbits, q  # every e_b is a code word; e_{p-1} repeats q times
    words = _span(generators, 1 << nbits)[1:]
    weight = q * _popcount(words, p) + _popcount(words & ((1 << r) - 1), p)
    return generators, p, nbits, int(weight.min())


def _popcount(x: torch.Tensor, bits: int) -> torch.Tensor:
    count = torch.zeros_like(x)
    for b in range(bits):
        count += (x >> b) & 1
    return count


def _span(generators: Sequence[int], count: int) -> torch.Tensor:
    """Code words c(i) = ⊕_{b in bits(i)} g_b for i = 0..count-1 (int64)."""
    index = torch.arange(count, dtype=torch.int64)
    code = torch.zeros(count, dtype=torch.int64)
    for b, g in enumerate(generators):
        if (count - 1) >> b == 0:
            break
        code ^= ((index >> b) & 1) * g
    return code


def cube_codes(num_classes: int, dim: int | None = None) -> torch.Tensor:
    """The binary code of every class of the ``cube`` classifier: int64 [K], bit k (k < p) is
    coordinate k (bits repeat cyclically when ``dim`` exceeds the searched width p). See the module
    docstring for the rule."""
    k = _num_classes(num_classes)
    _, d = _resolve_dim("cube", k, dim)
    generators, _, _, _ = _cube_plan(k, d)
    return _span(generators, k)


# ------------------------------------------------------------------------------------------- vertices
def _simplex(k: int, d_need: int, out: torch.Tensor) -> None:
    # Eq. 3 (e_1..e_d and α·1, α = (1 - √(d+1))/d), shifted by the centroid (1 + α)/(d + 1)·1 and
    # normalised (every centred vertex has norm √(d/(d+1))), in closed form with s = √(d + 1):
    #   class i < d:  ((d-1)s + 1)/(d√d) at coordinate i,  (1 - s)/(d√d) elsewhere;
    #   class d:      -1/√d everywhere.
    d = d_need
    s = math.sqrt(d + 1.0)
    denominator = d * math.sqrt(d)
    off = (1.0 - s) / denominator
    diag = ((d - 1) * s + 1.0) / denominator
    block = out[:, :d]
    block[:d].fill_(off)
    block[:d].diagonal().fill_(diag)
    block[d].fill_(-1.0 / math.sqrt(d))


def _orthoplex(k: int, d_need: int, out: torch.Tensor) -> None:
    d = d_need
    rows = torch.arange(k)
    out[rows, rows % d] = torch.where(rows < d, 1.0, -1.0).to(out.dtype)


def _cube(k: int, d: int, out: torch.Tensor) -> None:
    generators, p, _, _ = _cube_plan(k, d)
    code = _span(generators, k)
    s = 1.0 / math.sqrt(d)
    # byte-wise lookup: row b of the table holds ±s for the 8 bits of the byte value b
    byte = torch.arange(256).unsqueeze(1) >> torch.arange(8)
    table = torch.where((byte & 1).bool(), torch.tensor(s, dtype=out.dtype), torch.tensor(-s, dtype=out.dtype))
    pieces = [table[(code >> shift) & 255] for shift in range(0, p, 8)]
    base = torch.cat(pieces, dim=1)[:, :p] if len(pieces) > 1 else pieces[0][:, :p]
    out.copy_(base if d == p else base[:, torch.arange(d) % p])


def _hadamard(k: int, n: int, out: torch.Tensor) -> None:
    # Sylvester: H_{2m} = [[H, H], [H, -H]], so H_n[i, j] = (-1)^popcount(i & j).
    rows = torch.arange(k, dtype=torch.int64).unsqueeze(1)
    cols = torch.arange(n, dtype=torch.int64).unsqueeze(0)
    parity = _popcount(rows & cols, max(n.bit_length() - 1, 1)) & 1
    s = torch.tensor(1.0 / math.sqrt(n), dtype=out.dtype)
    out[:, :n] = torch.where(parity.bool(), -s, s)


_BUILDERS = {"simplex": _simplex, "orthoplex": _orthoplex, "cube": _cube, "hadamard": _hadamard}


def polytope_vertices(
    kind: str,
    num_classes: int,
    dim: int | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The K fixed, unit-norm classifier vertices [K, d] (seed 002 Eq. 3-5; Hadamard: seed 002 ref. [2]).

    Args:
        kind: ``"simplex"``, ``"orthoplex"``, ``"cube"`` or ``"hadamard"``.
        num_classes: K >= 2.
        dim: d; ``None`` -> :func:`polytope_dim` (Eq. 7). A larger d is allowed (see the module
            docstring); a smaller one raises ``ValueError`` naming the minimum.
        dtype: floating dtype of the result (default float64). Every entry is a closed-form constant
            computed in float64 and rounded once, so the vertices are exact to the dtype's precision.
        device: where to put the result.

    Row j is the vertex of class j; the class order is documented in the module docstring and is
    deterministic (no random numbers). Vectorised: a cube for K = 10^6 (d = 20) builds in well under
    a second.
    """
    kind, k = _kind(kind), _num_classes(num_classes)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    need, d = _resolve_dim(kind, k, dim)
    out = torch.zeros(k, d, dtype=dtype)
    _BUILDERS[kind](k, d if kind == "cube" else need, out)
    return out if device is None else out.to(device)
