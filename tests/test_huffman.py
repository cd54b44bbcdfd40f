"""Canonical Huffman codes and bit streams (sws.format.huffman)."""

import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sws.format import huffman


def _optimal_bits(counts):
    """Reference: the cost of an optimal prefix code is the sum of the merged weights."""
    heap = [c for c in counts if c > 0]
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        s = heapq.heappop(heap) + heapq.heappop(heap)
        total += s
        heapq.heappush(heap, s)
    return total


counts_st = st.lists(st.integers(0, 1000), min_size=1, max_size=80).filter(lambda c: sum(c) > 0)


@settings(max_examples=150, deadline=None)
@given(counts_st)
def test_lengths_are_optimal_and_complete(counts):
    ln = huffman.code_lengths(counts)
    assert all((ln[i] > 0) == (c > 0) for i, c in enumerate(counts))
    used = [i for i, c in enumerate(counts) if c > 0]
    if len(used) > 1:
        # a Huffman code is complete: Kraft sum exactly 1
        assert sum(2.0 ** -int(ln[i]) for i in used) == 1.0
        assert huffman.coded_bits(counts, ln) == _optimal_bits(counts)


def test_length_limit_holds_for_fibonacci_counts():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    ln = huffman.code_lengths(fib)
    assert ln.max() == huffman.MAX_CODE_LENGTH
    assert sum(2.0 ** -int(x) for x in ln) <= 1.0
    assert huffman.code_lengths(fib, max_length=32).max() > huffman.MAX_CODE_LENGTH  # needs the limit


def test_canonical_codes_follow_length_then_symbol():
    codes = huffman.canonical_codes([2, 1, 3, 3])
    assert codes.tolist() == [0b10, 0b0, 0b110, 0b111]


def test_oversubscribed_lengths_rejected():
    with pytest.raises(huffman.CodeError):
        huffman.canonical_codes([1, 1, 1])


@settings(max_examples=150, deadline=None)
@given(counts_st, st.integers(0, 2**32 - 1))
def test_stream_round_trip(counts, seed):
    ln = huffman.code_lengths(counts)
    rng = np.random.default_rng(seed)
    p = np.asarray(counts, float) / sum(counts)
    n = int(rng.integers(0, 3000))
    sym = rng.choice(len(counts), size=n, p=p)
    data, nbits = huffman.encode(sym, ln)
    assert len(data) == (nbits + 7) // 8
    assert nbits == int(ln[sym].astype(int).sum())
    np.testing.assert_array_equal(huffman.decode(data, nbits, ln, n), sym)


def test_single_symbol_stream_uses_one_bit_each():
    ln = huffman.code_lengths([0, 7])
    data, nbits = huffman.encode([1] * 7, ln)
    assert (data, nbits) == (b"\x00", 7)
    assert huffman.decode(data, nbits, ln, 7).tolist() == [1] * 7


def test_known_bits():
    ln = np.array([1, 2, 2])   # codes 0, 10, 11
    data, nbits = huffman.encode([0, 1, 2, 0], ln)
    assert nbits == 6 and data == bytes([0b01011000])


@pytest.mark.parametrize("nbits,count", [(6, 5), (6, 3), (5, 4), (40, 4), (-1, 1)])
def test_decode_rejects_wrong_lengths(nbits, count):
    ln = np.array([1, 2, 2])
    with pytest.raises(huffman.CodeError):
        huffman.decode(bytes([0b01011000]), nbits, ln, count)


def test_decode_rejects_invalid_code():
    ln = np.array([0, 1])   # only code "0" exists
    with pytest.raises(huffman.CodeError):
        huffman.decode(b"\x80", 1, ln, 1)


@given(st.lists(st.integers(0, 15), max_size=40))
def test_nibble_tables_round_trip(lengths):
    data = huffman.pack_lengths(lengths)
    assert len(data) == (len(lengths) + 1) // 2
    assert huffman.unpack_lengths(data, len(lengths)).tolist() == lengths


def test_streams_longer_than_a_block_round_trip():
    rng = np.random.default_rng(3)
    for k, n in [(2, 200_000), (9, 70_000), (300, 40_000)]:
        counts = rng.integers(1, 50, k)
        ln = huffman.code_lengths(counts)
        sym = rng.choice(k, size=n, p=counts / counts.sum())
        data, nbits = huffman.encode(sym, ln)
        assert nbits > huffman._BLOCK_BITS
        np.testing.assert_array_equal(huffman.decode(data, nbits, ln, n), sym)
        for bad_bits, bad_count in [(nbits - 1, n), (nbits, n - 1), (nbits, n + 1)]:
            with pytest.raises(huffman.CodeError):
                huffman.decode(data, bad_bits, ln, bad_count)


@pytest.mark.parametrize("where", [0, 1, 65535, 65536, 65537, 131071, 199_998])
def test_an_invalid_code_is_found_in_any_block(where):
    ln = np.array([1, 0, 2])                 # codes 0 and 10; 11 is no code
    sym = np.zeros(200_000, np.int64)
    sym[::7] = 2
    bits = np.unpackbits(np.frombuffer(huffman.encode(sym, ln)[0], np.uint8))
    nbits = huffman.encode(sym, ln)[1]
    bits[where:where + 2] = 1                 # "11" at `where`
    data = np.packbits(bits).tobytes()
    with pytest.raises(huffman.CodeError):
        huffman.decode(data, nbits, ln, sym.size)


def test_decode_checks_the_bit_count_against_the_longest_code():
    ln = np.array([1, 1])
    with pytest.raises(huffman.CodeError, match="longest codes"):
        huffman.decode(b"\0" * 4, 31, ln, 2)     # 2 symbols cannot take 31 bits


def test_small_and_block_paths_agree():
    rng = np.random.default_rng(5)
    for _ in range(300):
        k = int(rng.integers(1, 40))
        counts = rng.integers(0, 30, k)
        counts[rng.integers(k)] += 1
        ln = huffman.code_lengths(counts)
        n = int(rng.integers(1, huffman._SMALL + 1))
        sym = rng.choice(k, size=n, p=counts / counts.sum())
        data, nbits = huffman.encode(sym, ln)
        small = huffman._decode_short(data, nbits, ln.tolist(), n)
        saved, huffman._SMALL = huffman._SMALL, 0
        try:
            block = huffman.decode(data, nbits, ln, n).tolist()
        finally:
            huffman._SMALL = saved
        assert small == block == sym.tolist()
