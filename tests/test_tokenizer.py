import numpy as np
import pytest
import torch

from mambadna import tokenizer as tk


def test_ids_match_caduceus_hyenadna_vocab():
    assert (tk.CLS, tk.SEP, tk.BOS, tk.MASK, tk.PAD, tk.RESERVED, tk.UNK) == (0, 1, 2, 3, 4, 5, 6)
    assert list(tk.encode("ACGTN")) == [7, 8, 9, 10, 11]
    assert tk.VOCAB_SIZE == 12


def test_case_softmask_iupac_and_u():
    ids, soft = tk.encode("ACgtNnRYKMSWBDHVuU", return_softmask=True)
    assert list(ids[:6]) == [7, 8, 9, 10, 11, 11]
    assert set(ids[6:16]) == {tk.N}
    assert list(ids[16:]) == [tk.T, tk.T]
    assert soft.tolist() == [False, False, True, True, False, True] + [False] * 10 + [True, False]


def test_invalid_byte_names_sequence_and_offset():
    with pytest.raises(tk.TokenizationError, match=r"chr7: invalid character '\*' \(byte 42\) at offset 3"):
        tk.encode("ACG*T", name="chr7")
    ids = tk.encode("ACG*T", lenient=True)
    assert ids[3] == tk.UNK and ids[4] == tk.T


def test_decode_roundtrip_and_specials():
    rng = np.random.default_rng(0)
    s = "".join(rng.choice(list("ACGTN"), 500))
    assert tk.decode(tk.encode(s)) == s
    assert tk.decode(np.array([tk.CLS, 7, tk.MASK]), keep_special=True) == "[CLS]A[MASK]"


def test_reverse_complement_numpy_and_torch():
    ids = tk.encode("AACGTN")
    rc = tk.reverse_complement(ids)
    assert tk.decode(rc) == "NACGTT"
    with_special = np.array([tk.CLS, 7, 8, tk.PAD])
    assert tk.reverse_complement(with_special).tolist() == [tk.PAD, 9, 10, tk.CLS]
    t = torch.tensor([[7, 8, 9, 10, 11]])
    assert tk.reverse_complement(t).tolist() == [[11, 7, 8, 9, 10]]
    # involution on random batches
    x = np.random.default_rng(1).integers(0, 12, size=(3, 50))
    assert np.array_equal(tk.reverse_complement(tk.reverse_complement(x)), x)
    assert tk.reverse_complement_str("ACCGTTn") == "NAACGGT"
