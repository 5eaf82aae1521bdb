"""BAM reads on real alignments: filters, regions, orientation, index building, errors."""
from __future__ import annotations

import os
import shutil
import stat

import pysam
import pytest

from mambadna.io.bam import iter_reads, parse_region
from mambadna.errors import InputError
from mambadna.tokenizer import reverse_complement_str


@pytest.fixture
def ex1(shared_data):
    return shared_data / "alignments/ex1/ex1.bam"


def test_whole_file_counts_and_unmapped(ex1):
    reads = list(iter_reads(ex1))
    assert len(reads) == 3235
    assert all(r.contig in ("chr1", "chr2") and 0 <= r.start < r.end for r in reads)
    everything = list(iter_reads(ex1, skip_unmapped=False))
    unm = [r for r in everything if r.contig is None]
    assert len(everything) == 3270 and len(unm) == 35
    assert all(r.strand == "." and r.start == -1 for r in unm)


def test_region_is_one_based_inclusive_and_matches_chr_prefix(ex1):
    reads = list(iter_reads(ex1, region="chr1:100-200"))
    with pysam.AlignmentFile(str(ex1)) as af:
        want = [r.query_name for r in af.fetch("chr1", 99, 200)
                if not (r.is_unmapped or r.is_secondary or r.is_supplementary or r.is_duplicate or r.is_qcfail)]
    assert [r.name for r in reads] == want and len(want) > 0
    assert all(r.start < 200 and r.end > 99 for r in reads)
    assert len(list(iter_reads(ex1, region="1:100-200"))) == len(reads)
    assert parse_region("chr1:1,000-2,000") == ("chr1", 999, 2000)
    assert parse_region("chr1:5") == ("chr1", 4, None)
    assert parse_region("HLA-A*01:01", ["HLA-A*01:01"]) == ("HLA-A*01:01", None, None)


def test_mapq_filter_and_orientation(ex1):
    allr = list(iter_reads(ex1))
    hi = list(iter_reads(ex1, min_mapq=60))
    assert 0 < len(hi) < len(allr) and all(r.mapq >= 60 for r in hi)
    orig = list(iter_reads(ex1, original_orientation=True))
    rev = [(a, b) for a, b in zip(allr, orig) if a.strand == "-"]
    assert rev
    assert all(b.sequence == reverse_complement_str(a.sequence) for a, b in rev)
    assert all(a.sequence == b.sequence for a, b in zip(allr, orig) if a.strand == "+")


def test_mpileup_bam_numeric_contig(shared_data):
    bam = shared_data / "alignments/mpileup/mpileup.1.bam"
    reads = list(iter_reads(bam, region="chr17:1-4200", skip_duplicates=False, skip_qcfail=False,
                            skip_secondary=False, skip_supplementary=False))
    assert len(reads) == 568 and {r.contig for r in reads} == {"17"}
    assert len(list(iter_reads(bam, skip_unmapped=False, skip_duplicates=False, skip_qcfail=False,
                               skip_secondary=False, skip_supplementary=False))) == 569


def test_missing_index_built_when_writable(ex1, tmp_path):
    dst = tmp_path / "copy.bam"
    shutil.copy(ex1, dst)
    assert len(list(iter_reads(dst, region="chr2:1-100"))) > 0
    assert (tmp_path / "copy.bam.bai").exists()


def test_missing_index_in_readonly_folder(ex1, tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    shutil.copy(ex1, d / "x.bam")
    os.chmod(d, stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert len(list(iter_reads(d / "x.bam"))) == 3235  # whole-file: no index needed
        with pytest.raises(InputError) as e:
            list(iter_reads(d / "x.bam", region="chr1:1-10"))
        assert "x.bam" in str(e.value) and "index" in str(e.value)
    finally:
        os.chmod(d, 0o755)


def test_bad_inputs(ex1, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        list(iter_reads(tmp_path / "nope.bam"))
    txt = tmp_path / "t.bam"
    txt.write_text("this is not a bam\n")
    with pytest.raises(InputError, match="t.bam"):
        list(iter_reads(txt))
    (tmp_path / "e.bam").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        list(iter_reads(tmp_path / "e.bam"))
    with pytest.raises(InputError, match="chrX"):
        list(iter_reads(ex1, region="chrX:1-10"))
    with pytest.raises(InputError, match="end is before start"):
        list(iter_reads(ex1, region="chr1:200-100"))
