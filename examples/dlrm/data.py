"""Click-log batches: a synthetic Criteo-like generator and a Criteo TSV reader.

A batch is the *global* batch; every rank sees the same one (each rank needs
all samples' indices for its own tables, and its slice for the MLPs):

    Batch.dense   float32 [B, 13]   log(1 + count) features
    Batch.sparse  int64   [B, 26]   one row index per categorical feature
                  int64   [B, L]    multi-hot: feature t's bag of k_t indices in
                                    columns sum(k_<t) ..., L = sum(k) (bag_sizes)
    Batch.labels  float32 [B]       click (1) or not (0)

Both sources are deterministic: batch ``i`` is a pure function of the seed (or
the file) and ``i``, which is what makes resumed runs and world sizes agree.
"""
import collections
import hashlib
import math
import re
import sys

import torch

from .config import NUM_DENSE, NUM_SPARSE

Batch = collections.namedtuple("Batch", "dense sparse labels")


def _generator(seed, stream, index):
    """A torch.Generator for batch `index` of `stream` ("train"/"eval"/"model")."""
    digest = hashlib.blake2b(f"{seed}/{stream}/{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def _coprime_multiplier(n, g):
    """An odd multiplier coprime to n: k -> (k * a + c) % n is then a bijection."""
    a = int(torch.randint(1, max(n, 2), (1,), generator=g)) | 1
    while math.gcd(a, n) != 1:
        a += 2
    return a


def _zipf_ranks(u, n, s):
    """Ranks in [0, n) from uniforms u by the inverse CDF of a power law x^-s
    on [1, n + 1) (a continuous bounded Zipf law, floored)."""
    if abs(s - 1.0) < 1e-9:
        x = torch.pow(float(n + 1), u)
    else:
        top = (n + 1.0) ** (1.0 - s) - 1.0
        x = torch.pow(1.0 + u * top, 1.0 / (1.0 - s))
    return (x.floor().long() - 1).clamp_(0, n - 1)


_M64 = (1 << 64) - 1


def _i64(c):
    """A 64-bit constant as the signed int64 torch stores."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _srl(x, k):
    """Logical right shift of int64 `x` by k bits."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _hash_uniform(x):
    """Uniforms in [0, 1) (float64) from int64 keys: splitmix64's finaliser."""
    x = x + _i64(0x9E3779B97F4A7C15)
    x = (x ^ _srl(x, 30)) * _i64(0xBF58476D1CE4E5B9)
    x = (x ^ _srl(x, 27)) * _i64(0x94D049BB133111EB)
    x = x ^ _srl(x, 31)
    return _srl(x, 11).double() * 2.0 ** -53


# Skew of a bag's other lookups around its one-hot id: offset d >= 1 has
# weight about 1/d^MULTI_HOT_ZIPF, so most land near the id.
MULTI_HOT_ZIPF = 1.2


def multi_hot(sparse, table_rows, bag_sizes):
    """One-hot ids [B, 26] -> multi-hot bags [B, sum(bag_sizes)], a pure function
    of each id (MLPerf DLRMv2 materializes its multi-hot Criteo the same way):
    feature t's bag is the id itself followed by k_t - 1 rows (id + d_j) % rows,
    each offset d_j >= 1 drawn from a bounded Zipf law by a hash of (t, id, j).
    Hot ids thus give hot bags, and a bag tells the model no more than its id."""
    if list(bag_sizes) == [1] * len(bag_sizes):
        return sparse
    cols = []
    for t, (n, k) in enumerate(zip(table_rows, bag_sizes)):
        ids = sparse[:, t:t + 1]
        cols.append(ids)
        if k > 1 and n > 1:
            j = torch.arange(1, k, dtype=torch.int64)
            key = (ids * 1024 + j) * 64 + t  # distinct per (t < 64, j < 1024, id)
            d = _zipf_ranks(_hash_uniform(key), n - 1, MULTI_HOT_ZIPF) + 1
            cols.append((ids + d) % n)
        elif k > 1:
            cols.append(ids.expand(-1, k - 1))
    return torch.cat(cols, 1).contiguous()


def bag_columns(bag_sizes):
    """(start, end) columns of each feature's bag in a multi-hot Batch.sparse."""
    out, start = [], 0
    for k in bag_sizes:
        out.append((start, start + k))
        start += k
    return out


class SyntheticCriteo:
    """Criteo-like click batches with a hidden ground-truth model.

    Indices of table t follow a bounded Zipf law (rank k has weight about
    1/(k+1)^zipf), scattered over the table by a fixed bijection so hot rows
    are not all adjacent. Labels are drawn from sigmoid(logit) of a hidden
    model: a linear term on the dense features, additive per-row effects of 8
    categorical features, and a rank-4 dot product between two of them (the
    kind of term DLRM's interaction layer can learn). So AUC can rise well
    above 0.5; the hidden model's own AUC is ``bayes_auc`` territory (~0.8).

    ``bag_sizes`` (multi-hot): each one-hot id is expanded into its bag by
    ``multi_hot``, and the hidden model's per-row terms are averaged over the
    bag (identical to the one-hot model when every bag size is 1).
    """

    SIGNAL_FEATURES = (0, 1, 4, 6, 9, 13, 16, 24)
    PAIR = (2, 10)

    def __init__(self, table_rows, batch_size, seed=0, zipf=1.1, bag_sizes=None):
        if len(table_rows) != NUM_SPARSE:
            raise ValueError(f"need {NUM_SPARSE} table sizes, got {len(table_rows)}")
        self.table_rows = list(table_rows)
        self.bag_sizes = list(bag_sizes) if bag_sizes is not None else [1] * NUM_SPARSE
        if len(self.bag_sizes) != NUM_SPARSE or min(self.bag_sizes) < 1:
            raise ValueError(f"need {NUM_SPARSE} bag sizes >= 1, got {self.bag_sizes}")
        self._cols = bag_columns(self.bag_sizes)
        self.batch_size = batch_size
        self.seed = seed
        g = _generator(seed, "model", 0)
        self.zipf = zipf
        self._mul, self._add = [], []
        for n in self.table_rows:
            self._mul.append(_coprime_multiplier(n, g))
            self._add.append(int(torch.randint(0, n, (1,), generator=g)))
        self._w_dense = torch.randn(NUM_DENSE, generator=g) * 0.5
        self._effects = {t: torch.randn(self.table_rows[t], generator=g) * 0.8
                         for t in self.SIGNAL_FEATURES}
        a, b = self.PAIR
        self._pair = (torch.randn(self.table_rows[a], 4, generator=g) * 0.6,
                      torch.randn(self.table_rows[b], 4, generator=g) * 0.6)
        self._bias = -1.0

    def batch(self, index, stream="train"):
        """Global batch `index` of `stream` ("train" or "eval")."""
        g = _generator(self.seed, stream, index)
        B = self.batch_size
        counts = torch.exp(torch.randn(B, NUM_DENSE, generator=g) * 1.5 + 1.0).floor()
        dense = torch.log1p(counts)
        cols = []
        for t, n in enumerate(self.table_rows):
            rank = self._zipf_ranks(torch.rand(B, generator=g, dtype=torch.float64), n)
            cols.append((rank * self._mul[t] + self._add[t]) % n)
        sparse = multi_hot(torch.stack(cols, 1), self.table_rows, self.bag_sizes)
        labels = torch.bernoulli(torch.sigmoid(self.true_logit(dense, sparse)), generator=g)
        return Batch(dense.float(), sparse, labels.float())

    def _zipf_ranks(self, u, n):
        return _zipf_ranks(u, n, self.zipf)

    def _bag_mean(self, table, sparse, t):
        """Mean over feature t's bag of table[id] (table [rows] or [rows, k])."""
        a, b = self._cols[t]
        v = table[sparse[:, a:b]]
        return v[:, 0] if b - a == 1 else v.mean(1)

    def true_logit(self, dense, sparse):
        """The hidden model's click logit [B] (the best any model can do)."""
        logit = self._bias + (dense - 1.4) @ self._w_dense / 2
        for t, e in self._effects.items():
            logit = logit + self._bag_mean(e, sparse, t)
        a, b = self.PAIR
        return logit + (self._bag_mean(self._pair[0], sparse, a) *
                        self._bag_mean(self._pair[1], sparse, b)).sum(1)

    def train_batches(self, start=0):
        i = start
        while True:
            yield self.batch(i, "train")
            i += 1

    def eval_batches(self, count):
        return [self.batch(i, "eval") for i in range(count)]


class BadLine(ValueError):
    """A malformed Criteo TSV line (the message names the file and line number)."""


_HASH_MUL = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


def hash_category(value, feature, rows):
    """Row of `value` (a hex string, "" when missing) in table `feature` of `rows` rows."""
    v = int(value, 16) if value else 1 << 62
    h = ((v ^ (feature * 0x632BE59BD9B4E019)) * _HASH_MUL) & _MASK
    h ^= h >> 29
    return h % rows


_INT = re.compile(r"-?[0-9]{1,19}")  # a Criteo count: plain decimal, fits in int64
_HEX = re.compile(r"[0-9a-fA-F]{1,16}")  # a hashed category: up to 64 bits of hex
_INT64_MAX = (1 << 63) - 1


def _quote(s, limit=40):
    """repr of a field, cut to `limit` characters with its full length stated."""
    return repr(s) if len(s) <= limit else f"{s[:limit]!r}... ({len(s)} characters)"


def parse_line(line, table_rows):
    """(label, dense[13], sparse[26]) of one TSV line; raises ValueError naming the problem.

    Strict Criteo format: label 0 or 1; integer features empty or a decimal
    integer (optional minus, digits only) within int64; categorical features
    empty or 1-16 hex digits; fields separated by single tabs."""
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) != 1 + NUM_DENSE + NUM_SPARSE:
        raise ValueError(f"expected {1 + NUM_DENSE + NUM_SPARSE} tab-separated fields, "
                         f"got {len(fields)}")
    if fields[0] not in ("0", "1"):
        raise ValueError(f"label must be 0 or 1, got {_quote(fields[0])}")
    dense = []
    for j, s in enumerate(fields[1:1 + NUM_DENSE]):
        if s and not _INT.fullmatch(s):
            raise ValueError(f"integer feature I{j + 1} is not a decimal integer: {_quote(s)}")
        x = int(s) if s else 0
        if x > _INT64_MAX or x < -_INT64_MAX - 1:
            raise ValueError(f"integer feature I{j + 1} is out of the int64 range: {_quote(s)}")
        dense.append(math.log1p(max(x, 0)))
    sparse = []
    for j, s in enumerate(fields[1 + NUM_DENSE:]):
        if s and not _HEX.fullmatch(s):
            raise ValueError(f"categorical feature C{j + 1} is not 1-16 hex digits: {_quote(s)}")
        sparse.append(hash_category(s, j, table_rows[j]))
    return int(fields[0]), dense, sparse


class CriteoTSV:
    """Streams batches from a Criteo TSV file (label, I1..I13, C1..C26 per line).

    Integer features are clamped at 0 and log(1 + x)-transformed, missing ones
    are 0; categorical hex values are hashed into the table sizes (a missing
    value has its own hash) and, with ``bag_sizes``, expanded into multi-hot
    bags by ``multi_hot``. A malformed line is reported on stderr with its
    line number and skipped (``bad_lines="skip"``), or raises ``BadLine``
    (``"fail"``); blank lines at the end of the file are ignored. The file is
    read again from the top when it runs out (a bad line is reported on the
    first pass only; ``skipped`` counts every skip); the last batch of a pass
    may be smaller than ``batch_size``.
    """

    MAX_REPORTS = 20

    def __init__(self, path, table_rows, batch_size, bad_lines="skip", report=None,
                 bag_sizes=None):
        if bad_lines not in ("skip", "fail"):
            raise ValueError(f"bad_lines must be 'skip' or 'fail', got {bad_lines!r}")
        self.path, self.table_rows, self.batch_size = path, list(table_rows), batch_size
        self.bag_sizes = list(bag_sizes) if bag_sizes is not None else [1] * NUM_SPARSE
        self.bad_lines = bad_lines
        self.skipped = 0   # lines skipped, over every pass
        self.passes = 0    # passes over the file completed
        self._reported = 0
        self._report = report or (lambda msg: print(msg, file=sys.stderr))

    def _bad(self, lineno, reason):
        msg = f"{self.path}:{lineno}: malformed line ({reason})"
        if self.bad_lines == "fail":
            raise BadLine(msg)
        self.skipped += 1
        if self.passes:
            return
        self._reported += 1
        if self._reported <= self.MAX_REPORTS:
            self._report(msg + "; skipped")
        elif self._reported == self.MAX_REPORTS + 1:
            self._report(f"{self.path}: more malformed lines; no longer reporting each")

    def _lines(self):
        """parse_line of every good line; blank lines are bad only when a
        non-blank line follows them."""
        blank = []
        with open(self.path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if raw in (b"\n", b"\r\n"):
                    blank.append(lineno)
                    continue
                for b in blank:
                    self._bad(b, "empty line")
                blank = []
                try:
                    parsed = parse_line(raw.decode("ascii"), self.table_rows)
                except UnicodeDecodeError:
                    self._bad(lineno, "not ASCII text")
                    continue
                except ValueError as e:
                    self._bad(lineno, str(e))
                    continue
                yield parsed

    def one_pass(self):
        """Yields the file's batches once."""
        labels, dense, sparse = [], [], []
        for lab, d, s in self._lines():
            labels.append(lab)
            dense.append(d)
            sparse.append(s)
            if len(labels) == self.batch_size:
                yield self._batch(labels, dense, sparse)
                labels, dense, sparse = [], [], []
        if labels:
            yield self._batch(labels, dense, sparse)
        self.passes += 1

    def _batch(self, labels, dense, sparse):
        return Batch(torch.tensor(dense, dtype=torch.float32),
                     multi_hot(torch.tensor(sparse, dtype=torch.int64), self.table_rows,
                               self.bag_sizes),
                     torch.tensor(labels, dtype=torch.float32))

    def train_batches(self, start=0):
        """Endless batches (the file repeats), skipping the first `start`."""
        i, produced = 0, False
        while True:
            for b in self.one_pass():
                produced = True
                if i >= start:
                    yield b
                i += 1
            if not produced:
                raise BadLine(f"{self.path}: no usable lines")

    def eval_batches(self, count):
        out = []
        for b in self.one_pass():
            out.append(b)
            if len(out) == count:
                break
        if not out:
            raise BadLine(f"{self.path}: no usable lines")
        return out
