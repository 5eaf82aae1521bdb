"""Genome: plain-gzip / bgzip / plain FASTA on real data, index caching, padding, strands, errors."""
from __future__ import annotations

import logging
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest

from mambadna.errors import InputError
from mambadna.io.fasta import Genome, compression_of
from mambadna.tokenizer import encode, reverse_complement_str

ECOLI = "genomes/GCF_000005845.2_ASM584v2_genomic.fna.gz"


def _listing(d: Path):
    return sorted(p.name for p in d.iterdir())


def test_ecoli_plain_gzip_decompressed_once_with_one_log_line(shared_data, tmp_path, caplog):
    path = shared_data / ECOLI
    before = _listing(path.parent)
    assert compression_of(path) == "gzip"
    with caplog.at_level(logging.INFO, logger="mambadna"):
        g = Genome(path, cache_dir=tmp_path)
    lines = [r for r in caplog.records if r.name == "mambadna"]
    assert len(lines) == 1 and "plain gzip" in lines[0].getMessage() and str(path) in lines[0].getMessage()
    assert g.contigs == ["NC_000913.3"]
    assert g.lengths == {"NC_000913.3": 4641652}
    assert g.fetch("NC_000913.3", 0, 20) == "AGCTTTTCATTCTGACTGCA"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mambadna"):
        g2 = Genome(path, cache_dir=tmp_path)
    assert not [r for r in caplog.records if r.name == "mambadna"]  # cached: no second decompression
    assert g2.fetch("NC_000913.3", 1000, 1100) == g.fetch("NC_000913.3", 1000, 1100)
    assert _listing(path.parent) == before  # nothing written beside the shared file
    assert any(p.name.endswith(".fai") for p in tmp_path.iterdir())


def test_fetch_padding_clipping_strand(shared_data):
    g = Genome(shared_data / ECOLI)
    c, L = "NC_000913.3", 4641652
    s = g.fetch(c, -3, 5)
    assert s == "NNN" + g.fetch(c, 0, 5) and len(s) == 8
    assert g.fetch(c, -3, 5, pad=False) == g.fetch(c, 0, 5)
    tail = g.fetch(c, L - 4, L + 6)
    assert len(tail) == 10 and tail.endswith("N" * 6) and "N" not in tail[:4]
    assert g.fetch(c, L - 4, L + 6, pad=False) == tail[:4]
    assert g.fetch(c, L + 10, L + 15) == "NNNNN"
    assert g.fetch(c, L + 10, L + 15, pad=False) == ""
    fwd = g.fetch(c, 123456, 123556)
    assert g.fetch(c, 123456, 123556, strand="-") == reverse_complement_str(fwd)
    ids = g.fetch_ids(c, 123456, 123556)
    assert ids.dtype == np.uint8 and ids.shape == (100,)
    np.testing.assert_array_equal(ids, encode(fwd))
    with pytest.raises(InputError):
        g.fetch(c, 10, 5)


def test_fly_multicontig_with_n_runs(shared_data):
    g = Genome(shared_data / "genomes/D.melanogaster.fa.gz")
    assert g.contigs == ["2L", "2R", "3L", "3R", "4", "X", "Y"]
    assert sum(g.lengths.values()) == 1375477
    assert g.fetch("3R", 44499, 50290) == "N" * (50290 - 44499)
    assert g.fetch("3R", 44498, 44499) != "N"
    total_n = sum(g.fetch(c, 0, L).count("N") for c, L in g.lengths.items())
    assert total_n == 17972
    assert g.resolve_contig("chr3R") == "3R"


def test_worm_lengths_and_mito_alias(shared_data, tmp_path):
    g = Genome(shared_data / "genomes/C.elegans.fa.gz")
    assert sum(g.lengths.values()) == 1002861
    assert g.lengths["I"] == 150724  # header says 1..150725 but the sequence is 1 bp shorter
    fa = tmp_path / "m.fa"
    fa.write_text(">chrM\nACGTacgtNN\n>chr1\nAAAA\n")
    m = Genome(fa)
    assert m.resolve_contig("MT") == "chrM" and m.resolve_contig("1") == "chr1"
    assert m.fetch("chrM", 0, 10) == "ACGTACGTNN"
    assert m.fetch("chrM", 0, 10, softmask=True) == "ACGTacgtNN"
    assert m.fetch("chrM", 0, 8, strand="-", softmask=True) == "acgtACGT"


def test_ex1_existing_index_and_chr_matching(shared_data):
    g = Genome(shared_data / "alignments/ex1/ex1.fa")
    assert g.lengths == {"chr1": 1575, "chr2": 1584}
    assert g.resolve_contig("2") == "chr2"
    with pytest.raises(InputError) as e:
        g.resolve_contig("chrX")
    msg = str(e.value)
    assert "ex1.fa" in msg and "chrX" in msg and "chr1" in msg


def test_bgzip_fasta_index_built_beside(tmp_path):
    import pysam

    fa = tmp_path / "b.fa"
    fa.write_text(">s1\n" + "ACGTTGCA" * 50 + "\n>s2\nGGGGCCCC\n")
    pysam.tabix_compress(str(fa), str(tmp_path / "b.fa.gz"))
    g = Genome(tmp_path / "b.fa.gz")
    assert compression_of(tmp_path / "b.fa.gz") == "bgzf"
    assert (tmp_path / "b.fa.gz.fai").exists() and (tmp_path / "b.fa.gz.gzi").exists()
    assert g.fetch("s1", 4, 12) == "TGCAACGT" and g.lengths["s2"] == 8


def test_readonly_folder_index_goes_to_cache(tmp_path, monkeypatch):
    d = tmp_path / "ro"
    d.mkdir()
    (d / "x.fa").write_text(">a\nACGTACGT\nAC\n")
    cache = tmp_path / "cache"
    monkeypatch.setenv("MAMBADNA_CACHE", str(cache))
    os.chmod(d, stat.S_IRUSR | stat.S_IXUSR)
    try:
        g = Genome(d / "x.fa")
        assert g.fetch("a", 6, 10) == "GTAC"
        assert _listing(d) == ["x.fa"]
        assert any(p.name.endswith(".fai") for p in cache.iterdir())
    finally:
        os.chmod(d, 0o755)


def test_pickle_reopens_lazily(shared_data):
    g = Genome(shared_data / "alignments/ex1/ex1.fa")
    want = g.fetch("chr1", 100, 150)
    blob = pickle.dumps(g)
    assert g._fh is not None
    g2 = pickle.loads(blob)
    assert g2._fh is None
    assert g2.fetch("chr1", 100, 150) == want
    g2.close()
    assert g2.fetch("chr1", 100, 150) == want  # re-opened after close
    with Genome(shared_data / "alignments/ex1/ex1.fa") as g3:
        assert g3.fetch("chr2", 0, 5) == g.fetch("chr2", 0, 5)


@pytest.mark.parametrize("content,needle", [
    (None, "no such file"),
    ("", "empty file"),
    ("\n\n  \n", "empty FASTA"),
    ("hello world\nACGT\n", "not a FASTA"),
    (">a\nACGT\nAC\nACGT\n", "line 3"),
    (">a\nACGT\nACGTAC\n", "line 3"),
])
def test_bad_fasta(tmp_path, content, needle):
    p = tmp_path / "bad.fa"
    if content is not None:
        p.write_text(content)
    with pytest.raises(InputError) as e:
        Genome(p)
    assert str(e.value).startswith(str(p)) and needle in str(e.value)
    assert not (tmp_path / "bad.fa.fai").exists()


def test_directory_is_not_a_fasta(tmp_path):
    with pytest.raises(InputError, match="directory"):
        Genome(tmp_path)
