"""Synthetic generator (determinism, skew, signal) and the Criteo TSV reader."""
import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from dlrm.config import Config
from dlrm.data import BadLine, CriteoTSV, SyntheticCriteo, hash_category

ROWS = Config(max_rows=5000).table_sizes()


def test_synthetic_deterministic():
    a = SyntheticCriteo(ROWS, 64, seed=3).batch(7)
    b = SyntheticCriteo(ROWS, 64, seed=3).batch(7)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    c = SyntheticCriteo(ROWS, 64, seed=4).batch(7)
    d = SyntheticCriteo(ROWS, 64, seed=3).batch(8)
    assert not torch.equal(a.sparse, c.sparse) and not torch.equal(a.sparse, d.sparse)
    e = SyntheticCriteo(ROWS, 64, seed=3).batch(7, "eval")
    assert not torch.equal(a.sparse, e.sparse)


def test_synthetic_shapes_ranges_and_skew():
    src = SyntheticCriteo(ROWS, 4096, seed=0)
    b = src.batch(0)
    assert b.dense.shape == (4096, 13) and b.dense.dtype == torch.float32
    assert b.sparse.shape == (4096, 26) and b.sparse.dtype == torch.int64
    assert set(b.labels.unique().tolist()) <= {0.0, 1.0}
    assert (b.dense >= 0).all()
    for t, n in enumerate(ROWS):
        assert 0 <= int(b.sparse[:, t].min()) and int(b.sparse[:, t].max()) < n
    col = b.sparse[:, 2]  # 5000 rows: Zipf puts much of the mass on a few rows
    top = torch.bincount(col, minlength=ROWS[2]).sort(descending=True).values
    assert top[:10].sum() > 0.2 * 4096
    assert len(col.unique()) > 200


def test_synthetic_labels_have_signal():
    src = SyntheticCriteo(ROWS, 4096, seed=1)
    b = src.batch(0)
    assert 0.1 < b.labels.mean() < 0.5
    auc = roc_auc_score(b.labels.numpy(), src.true_logit(b.dense, b.sparse).numpy())
    assert auc > 0.8


def _line(label="1", dense=None, cats=None):
    dense = ["1", "", "-3", "0", "25", "", "7", "2", "", "0", "1", "", "100"] if dense is None else dense
    cats = ["68fd1e64", "80e26c9b", "", "1f89b562"] + ["a" * 8] * 22 if cats is None else cats
    return "\t".join([label] + dense + cats) + "\n"


def test_tsv_parsing(tmp_path):
    path = tmp_path / "day.tsv"
    path.write_text(_line() + _line("0") + _line("1"))
    src = CriteoTSV(str(path), ROWS, batch_size=2)
    batches = list(src.one_pass())
    assert [b.labels.tolist() for b in batches] == [[1.0, 0.0], [1.0]]
    b = batches[0]
    expect = [math.log1p(max(int(s), 0)) if s else 0.0 for s in _line().split("\t")[1:14]]
    torch.testing.assert_close(b.dense[0], torch.tensor(expect))
    assert b.sparse[0, 0] == hash_category("68fd1e64", 0, ROWS[0])
    assert b.sparse[0, 2] == hash_category("", 2, ROWS[2])
    assert ((b.sparse >= 0) & (b.sparse < torch.tensor(ROWS))).all()
    assert src.skipped == 0


BAD = [
    ("2" + _line()[1:], "label must be 0 or 1"),
    (_line().replace("\t25\t", "\t2x5\t"), "I5 is not a decimal integer: '2x5'"),
    (_line().replace("80e26c9b", "80e26c9z"), "C2 is not 1-16 hex digits: '80e26c9z'"),
    ("1\t2\t3\n", "expected 40 tab-separated fields, got 3"),
    ("\n", "empty line"),
    # Python's int() would take these; the Criteo format has plain digits only
    (_line().replace("\t25\t", "\t1_000\t"), "I5 is not a decimal integer: '1_000'"),
    (_line().replace("\t25\t", "\t 7 \t"), "I5 is not a decimal integer: ' 7 '"),
    (_line().replace("\t25\t", "\t+7\t"), "I5 is not a decimal integer: '+7'"),
    (_line().replace("\t-3\t", "\t-\t"), "I3 is not a decimal integer: '-'"),
    (_line().replace("80e26c9b", "0x80e26c"), "C2 is not 1-16 hex digits: '0x80e26c'"),
    (_line().replace("\t25\t", "\t9223372036854775808\t"), "I5 is out of the int64 range"),
    (_line().replace("\t25\t", "\t" + "9" * 309 + "\t"), "I5 is not a decimal integer"),
]


@pytest.mark.parametrize("bad,reason", BAD)
def test_tsv_bad_line_skipped_with_line_number(tmp_path, bad, reason):
    path = tmp_path / "day.tsv"
    path.write_text(_line() + bad + _line("0"))
    msgs = []
    src = CriteoTSV(str(path), ROWS, batch_size=8, report=msgs.append)
    (b,) = list(src.one_pass())
    assert b.labels.tolist() == [1.0, 0.0]
    assert src.skipped == 1
    assert len(msgs) == 1 and f"{path}:2:" in msgs[0] and reason in msgs[0]


def test_tsv_bad_line_fails_by_flag(tmp_path):
    path = tmp_path / "day.tsv"
    path.write_bytes(_line().encode() * 3 + b"1\t\xff\xfe\n")
    src = CriteoTSV(str(path), ROWS, batch_size=2, bad_lines="fail")
    with pytest.raises(BadLine, match=r"day.tsv:4: malformed line \(not ASCII text\)"):
        list(src.one_pass())


def test_tsv_repeats_and_empty_file(tmp_path):
    path = tmp_path / "day.tsv"
    path.write_text(_line() * 3)
    it = CriteoTSV(str(path), ROWS, batch_size=2).train_batches(start=1)
    assert [next(it).labels.shape[0] for _ in range(3)] == [1, 2, 1]
    empty = tmp_path / "empty.tsv"
    empty.write_text("garbage\n")
    with pytest.raises(BadLine, match="no usable lines"):
        next(CriteoTSV(str(empty), ROWS, 2, report=lambda m: None).train_batches())


@pytest.mark.parametrize("bad_lines", ["skip", "fail"])
def test_tsv_huge_value_is_a_bad_line_quoted_short(tmp_path, bad_lines):
    """309+ digits overflowed math.log1p (an uncaught OverflowError); the
    message quotes at most 40 characters of a long value."""
    path = tmp_path / "day.tsv"
    for digits in (309, 5000):
        path.write_text(_line() + _line().replace("\t25\t", "\t" + "7" * digits + "\t"))
        msgs = []
        src = CriteoTSV(str(path), ROWS, batch_size=8, bad_lines=bad_lines, report=msgs.append)
        if bad_lines == "fail":
            with pytest.raises(BadLine) as e:
                list(src.one_pass())
            msg = str(e.value)
        else:
            (b,) = list(src.one_pass())
            assert b.labels.shape == (1,) and len(msgs) == 1
            msg = msgs[0]
        assert f"{path}:2: malformed line (integer feature I5 is not a decimal integer: " \
               f"'{'7' * 40}'... ({digits} characters))" in msg, msg
        assert len(msg) < 200 + len(str(path))


def test_tsv_bad_line_reported_once_over_passes(tmp_path):
    path = tmp_path / "day.tsv"
    path.write_text(_line() + "1\t2\n" + _line("0"))
    msgs = []
    it = CriteoTSV(str(path), ROWS, batch_size=2, report=msgs.append)
    batches = it.train_batches()
    for _ in range(4):  # four passes over the file
        assert next(batches).labels.tolist() == [1.0, 0.0]
    assert len(msgs) == 1 and f"{path}:2:" in msgs[0], msgs
    assert it.skipped >= 3  # still counted on every pass


@pytest.mark.parametrize("tail", ["\n", "\n\n", "\r\n", "\n\r\n\n"])
def test_tsv_trailing_blank_lines_are_ignored(tmp_path, tail):
    path = tmp_path / "day.tsv"
    path.write_text(_line() + _line("0") + tail)
    src = CriteoTSV(str(path), ROWS, batch_size=8, bad_lines="fail")
    (b,) = list(src.one_pass())
    assert b.labels.tolist() == [1.0, 0.0] and src.skipped == 0
    path.write_text(_line() + tail + _line("0"))  # not at the end: malformed
    with pytest.raises(BadLine, match=r"day.tsv:2: malformed line \(empty line\)"):
        list(src.one_pass())


def test_tsv_strict_values_still_accepted(tmp_path):
    path = tmp_path / "day.tsv"
    dense = ["-1", "0", "9223372036854775807", "007"] + [""] * 9
    path.write_text(_line(dense=dense, cats=["FFFFFFFFFFFFFFFF"] + [""] * 25))
    (b,) = list(CriteoTSV(str(path), ROWS, batch_size=1, bad_lines="fail").one_pass())
    assert b.dense[0, :4].tolist() == pytest.approx([0.0, 0.0, math.log1p(2 ** 63 - 1), math.log1p(7)])
