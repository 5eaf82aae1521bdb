"""Labeled sets from class FASTAs (real CNNProm data), tables and labeled BEDs; stratified splits."""
from __future__ import annotations

import numpy as np
import pytest

from mambadna.errors import InputError
from mambadna.io.fasta import Genome
from mambadna.io.labeled import load_labeled, read_fasta_records, stratified_split
from mambadna.tokenizer import reverse_complement_str


@pytest.fixture(scope="module")
def ecoli_prom(shared_data):
    d = shared_data / "cnnprom_promoters"
    return load_labeled({"promoter": d / "Ecoli_prom.fa", "non_promoter": d / "Ecoli_non_prom.fa"})


def test_class_fastas_real(ecoli_prom):
    ls = ecoli_prom
    assert ls.classes == ["promoter", "non_promoter"]
    assert np.bincount(ls.labels).tolist() == [839, 3000]
    assert len(ls) == 3839 and {len(s) for s in ls.sequences} == {81}
    assert ls.names[0] == "ECK120010467__accAp__forward__208411"
    assert all(set(s) <= set("ACGT") for s in ls.sequences)
    assert ls.multilabel is None and ls.labels.dtype == np.int64


def test_headers_with_gt_entity(shared_data):
    recs = list(read_fasta_records(shared_data / "cnnprom_promoters/Mouse_tata.fa"))
    assert len(recs) == 1255 and all(len(s) == 251 for _, s, _ in recs)
    assert recs[0][0].startswith("gt;")


def test_stratified_split(ecoli_prom):
    y = ecoli_prom.labels
    tr, te = stratified_split(y, (0.8, 0.2), seed=7)
    assert len(tr) + len(te) == len(y) and not set(tr) & set(te)
    assert abs(len(te) - 0.2 * len(y)) <= 1
    assert abs(y[te].mean() - y.mean()) < 0.005 and abs(y[tr].mean() - y.mean()) < 0.005
    tr2, te2 = stratified_split(y, (0.8, 0.2), seed=7)
    assert np.array_equal(te, te2)
    assert not np.array_equal(te, stratified_split(y, (0.8, 0.2), seed=8)[1])
    a, b, c = stratified_split(y, (0.7, 0.1, 0.2), seed=0)
    assert len(a) + len(b) + len(c) == len(y)
    assert len(set(a) | set(b) | set(c)) == len(y)
    assert abs(len(b) - 0.1 * len(y)) <= 2 and abs(y[b].mean() - y.mean()) < 0.02
    with pytest.raises(ValueError):
        stratified_split(y, (0.8, 0.3))


def test_table_csv_tsv_and_multilabel(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("name,sequence,label\na,ACGT,pos\nb,acgg,neg\nc,ACGN,pos\n")
    ls = load_labeled(table=csv)
    assert ls.classes == ["neg", "pos"] and ls.labels.tolist() == [1, 0, 1]
    assert ls.sequences[1] == "ACGG" and ls.names == ["a", "b", "c"]
    tsv = tmp_path / "d.tsv"
    tsv.write_text("sequence\tlabel\nACGT\t10\nACGG\t2\nTTTT\t2;10\n")
    ls = load_labeled(table=tsv)
    assert ls.classes == ["2", "10"]  # numeric order
    assert ls.multilabel.tolist() == [[False, True], [True, False], [True, True]]


@pytest.mark.parametrize("content,needle", [
    ("sequence,label\nACGT,a\nACGT,a\n", "only one class"),
    ("seq,label\nACGT,a\nACGT,b\n", "missing column"),
    ("sequence,label\nACGT,a\nAC-T,b\n", "line 3"),
    ("", "empty file"),
    ("sequence,label\n", "no data rows"),
])
def test_table_errors(tmp_path, content, needle):
    p = tmp_path / "t.csv"
    p.write_text(content)
    with pytest.raises(InputError) as e:
        load_labeled(table=p)
    assert str(e.value).startswith(str(p)) and needle in str(e.value)


def test_fasta_errors(tmp_path, shared_data):
    bad = tmp_path / "bad.fa"
    bad.write_text(">ok\nACGT\n>weird\nAC*T\n")
    good = shared_data / "cnnprom_promoters/Bacillus_prom.fa"
    with pytest.raises(InputError) as e:
        load_labeled({"a": good, "b": bad})
    assert str(e.value).startswith(str(bad)) and "weird" in str(e.value) and "'*'" in str(e.value)
    with pytest.raises(InputError, match="only one class"):
        load_labeled({"a": good})
    (tmp_path / "empty.fa").write_text("")
    with pytest.raises(InputError, match="empty file"):
        load_labeled({"a": good, "b": tmp_path / "empty.fa"})


def test_labeled_bed_with_reference(shared_data, tmp_path):
    ref = shared_data / "alignments/ex1/ex1.fa"
    g = Genome(ref)
    bed = tmp_path / "l.bed"
    bed.write_text("chr1\t0\t10\tyes\t0\t+\n1\t100\t120\tno\t0\t-\nchr2\t5\t25\tyes\n")
    ls = load_labeled(bed=bed, reference=ref)
    assert ls.classes == ["no", "yes"] and ls.labels.tolist() == [1, 0, 1]
    assert ls.sequences[0] == g.fetch("chr1", 0, 10)
    assert ls.sequences[1] == reverse_complement_str(g.fetch("chr1", 100, 120))
    hdr = tmp_path / "h.bed"
    hdr.write_text("#chrom\tstart\tend\tname\tlabel\nchr1\t0\t10\tr1\tA\nchr2\t0\t10\tr2\tB\n")
    ls = load_labeled(bed=hdr, reference=ref)
    assert ls.classes == ["A", "B"] and ls.labels.tolist() == [0, 1]
    beyond = tmp_path / "b.bed"
    beyond.write_text("chr1\t0\t10\tyes\nchr1\t1570\t1580\tno\n")
    with pytest.raises(InputError) as e:
        load_labeled(bed=beyond, reference=ref)
    assert str(e.value).startswith(str(beyond)) and "line 2" in str(e.value) and "1575" in str(e.value)
    with pytest.raises(InputError, match="reference"):
        load_labeled(bed=bed)


def test_numeric_labels_for_regression(tmp_path, shared_data):
    p = tmp_path / "r.tsv"
    p.write_text("name\tsequence\tlabel\na\tACGT\t1.5\nb\tGGCC\t-2\nc\tAAAA\t3e-1\n")
    ls = load_labeled(table=p, numeric=True)
    assert ls.values.tolist() == [1.5, -2.0, 0.3] and ls.classes == ["label"] and ls.multilabel is None
    assert ls.subset([2, 0]).values.tolist() == [0.3, 1.5]
    ref = shared_data / "alignments/ex1/ex1.fa"
    bed = tmp_path / "r.bed"
    bed.write_text("chr1\t0\t10\t0.25\nchr2\t5\t25\t7\n")
    assert load_labeled(bed=bed, reference=ref, numeric=True).values.tolist() == [0.25, 7.0]


@pytest.mark.parametrize("content,needle", [
    ("sequence,label\nACGT,1\nACGA,high\n", "line 3"),
    ("sequence,label\nACGT,1\nACGA,nan\n", "not a finite number"),
    ("sequence,label\nACGT,2\nACGA,2.0\n", "all 2 labels are equal"),
])
def test_numeric_label_errors(tmp_path, content, needle):
    p = tmp_path / "t.csv"
    p.write_text(content)
    with pytest.raises(InputError) as e:
        load_labeled(table=p, numeric=True)
    assert str(e.value).startswith(str(p)) and needle in str(e.value)
    if "high" in content:
        assert "'high' is not a number" in str(e.value)
    with pytest.raises(InputError, match="regression needs numeric labels"):
        load_labeled({"a": p, "b": p}, numeric=True)
