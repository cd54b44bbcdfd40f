"""Reliability of the .sws reader (issue 16): adversarial fuzzing and bounded work.

Two parts, both printed as markdown (and written as JSON with ``--json``):

1. **Fuzz**: ``--cases`` (default 10,000) well-formed files with hostile headers from the
   generator of ``tests/test_fuzz_format.py`` (valid checksum, deflate and JSON), each decoded
   and inspected in process with its time and traced memory; the outcomes per edit and per
   error, the slowest case and the largest traced peak.  Any exception that is not a named
   ``FormatError``, or a bound broken, stops the run with the failing file's edits.
2. **Bounded work**: the worst files we could build (at most 1 MB each: the issue's
   decompression bomb, fillers that touch every page, the element and tensor limits reached,
   a 1 MiB header), each read by ``sws.format.stats.file_stats`` (what ``sws inspect`` prints)
   and by ``sws.load`` in a fresh process: the call's wall time, the process's peak RSS and
   the RSS after importing ``sws`` (the interpreter and torch).  ``--before REV`` runs the same
   files against the package at git revision REV (``git archive`` into a temporary folder),
   under a 4 GiB address-space limit so that a bomb cannot take the machine, and the fuzz
   cases too (what the old reader raised, and how long it took).

Usage::

    python benchmarks/fuzz_bench.py [--cases 10000] [--seed 16] [--before REV] [--huffman] [--json OUT]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAGIC = b"\x89SWS\r\n\x1a\n"


# --- part 1: fuzz ------------------------------------------------------------------------

def fuzz(cases: int, seed: int, v3: bool = False) -> dict:
    """The generator of ``tests/test_fuzz_format.py`` (versions 1-2) or, with ``v3``, of
    ``tests/test_fuzz_format_v3.py``."""
    sys.path.insert(0, str(ROOT / "tests"))
    import test_fuzz_format as t
    if v3:
        import test_fuzz_format_v3 as t
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    decode, inspect, by_edit = collections.Counter(), collections.Counter(), collections.Counter()
    worst = {"seconds": 0.0, "peak_bytes": 0}
    sizes = []

    @hseed(seed)
    @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(t.hostile_files())
    def run(case):
        data, names = case
        r = t.judge(data)
        decode[r["decode"]] += 1
        inspect[r["inspect"]] += 1
        sizes.append(len(data))
        for n in set(names):
            by_edit[(n, r["decode"])] += 1
        worst["seconds"] = max(worst["seconds"], r["seconds"])
        worst["peak_bytes"] = max(worst["peak_bytes"], r["peak_bytes"])

    t0 = time.perf_counter()
    run()
    return {"cases": len(sizes), "seed": seed, "wall_s": time.perf_counter() - t0,
            "decode": dict(decode), "inspect": dict(inspect),
            "by_edit": {f"{k}|{v}": c for (k, v), c in sorted(by_edit.items())},
            "max_case_seconds": worst["seconds"], "max_traced_peak_mib": worst["peak_bytes"] / 2 ** 20,
            "file_bytes": [min(sizes), max(sizes)]}


_FUZZ_BEFORE = r"""
import collections, json, sys, time
sys.path.insert(0, sys.argv[3])
from sws.format import container as ff
for name in ("ElementLimitError",):             # what the generator's module names, if missing
    if not hasattr(ff, name):
        setattr(ff, name, type(name, (ff.FormatError,), {}))
for name, value in (("MIN_MAX_TENSORS", 4096), ("DEFAULT_MAX_ELEMENTS", 2 ** 25),
                    ("MAX_ELEMENTS_ENV", "SWS_MAX_ELEMENTS")):
    if not hasattr(ff, name):
        setattr(ff, name, value)
import test_fuzz_format as t
from hypothesis import HealthCheck, given, settings, seed
from sws.format.stats import file_stats
tally, slow, worst = collections.Counter(), 0, 0.0

@seed(int(sys.argv[2]))
@settings(max_examples=int(sys.argv[1]), deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(t.hostile_files())
def run(case):
    global slow, worst
    data, _ = case
    for step in (ff.decode, file_stats):
        t0 = time.perf_counter()
        try:
            step(data)
            outcome = "ok"
        except ff.FormatError:
            outcome = "named FormatError"
        except Exception as e:   # noqa: BLE001 - what the old reader raised
            outcome = type(e).__name__
        dt = time.perf_counter() - t0
        slow += dt > 1
        worst = max(worst, dt)
        tally[f"{step.__name__}|{outcome}"] += 1
run()
print(json.dumps({"outcomes": dict(tally), "over_1s": slow, "max_seconds": worst}))
"""


def fuzz_before(cases: int, seed: int, src: Path) -> dict:
    """The same generator against the package in ``src`` (an old revision), under a 4 GiB
    address-space limit: what the reader raised and how long it took."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _FUZZ_BEFORE, str(cases), str(seed), str(ROOT / "tests")],
                          env=env, capture_output=True, text=True, timeout=7200,
                          preexec_fn=_limit_address_space(4 << 30))
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - t0}


def huffman_memory(rev: str | None) -> dict:
    """Traced peak memory and time of decoding 8,000,000 bits (1-bit codes, and a 64-symbol
    code), by this tree's decoder and by the one at ``rev``."""
    import importlib.util
    import tracemalloc

    import numpy as np
    sources = {"after": (ROOT / "src/sws/format/huffman.py").read_text()}
    if rev:
        sources["before"] = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/sws/format/huffman.py"],
                                           capture_output=True, text=True, check=True).stdout
    out = {}
    for label, text in sources.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "huffman_under_test.py"
            path.write_text(text)
            spec = importlib.util.spec_from_file_location(f"huffman_{label}", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        rng = np.random.default_rng(0)
        for k in (2, 64):
            counts = rng.integers(1, 1000, k)
            ln = mod.code_lengths(counts)
            p = counts / counts.sum()
            n = int(8_000_000 / (ln * p).sum())
            sym = rng.choice(k, size=n, p=p)
            data, nbits = mod.encode(sym, ln)
            tracemalloc.start()
            t0 = time.perf_counter()
            got = mod.decode(data, nbits, ln, n)
            seconds = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert np.array_equal(got, sym)
            out[f"{label}|{k} symbols"] = {"bits": nbits, "symbols": n, "seconds": seconds,
                                           "peak_mib": peak / 2 ** 20, "bytes_per_bit": peak / nbits}
    return out


# --- part 2: the worst files -----------------------------------------------------------

def _file(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    text = packer.compress(text) + packer.flush()
    body = struct.pack("<8sIIQ", MAGIC, 2, len(text), len(payload)) + text + payload
    return body + struct.pack("<I", zlib.crc32(body))


def _nibbles(lengths) -> bytes:
    ln = list(lengths) + [0] * (len(lengths) % 2)
    return bytes((ln[i] << 4) | ln[i + 1] for i in range(0, len(ln), 2))


def _ones(n: int) -> bytes:
    return b"\xff" * (n // 8) + (bytes([(0xFF << (8 - n % 8)) & 0xFF]) if n % 8 else b"")


def _fillers(name: str, shape, gap_bits: int, entries: int):
    """``entries`` entries of gap 2**gap_bits - 1 and index 1, one bit each: one value every
    2**gap_bits positions, ``entries * 2**gap_bits`` positions addressed."""
    top = (1 << gap_bits) - 1
    gl = [0] * (top + 1)
    gl[0] = gl[top] = 1
    payload = _nibbles(gl) + _nibbles([1, 1]) + _ones(entries) + _ones(entries)
    return {"name": name, "shape": shape, "sparse": [gap_bits, entries, top + 1, 2, entries, entries]}, payload


def _model(tensors_and_payloads, name="lenet-300-100", **extra) -> bytes:
    tensors = [h for h, _ in tensors_and_payloads]
    return _file({"model": {"name": name, **extra}, "codebook": [0, 0.5], "tensors": tensors},
                 b"".join(p for _, p in tensors_and_payloads))


def _dense(name: str, entries: int):
    """``entries`` values in a row, gap 0 and index 1, one bit each (a one-symbol gap table)."""
    return ({"name": name, "shape": [entries], "sparse": [1, entries, 1, 2, entries, entries]},
            _nibbles([1]) + _nibbles([0, 1]) + bytes((entries + 7) // 8) * 2)


def worst_files() -> dict[str, tuple[str, bytes]]:
    """name: (what it is, bytes)."""
    from sws.format import container as ff
    big = [2 ** 16, 2 ** 15]
    files = {
        "bomb-11k": ("the issue's bomb: 3 sparse tensors of 2^31 values, 8,000 entries each",
                     _model([_fillers(f"{i}.weight", big, 12, 8000) for i in range(3)])),
        "bomb-11k/16": ("the same with 2^27 values a tensor (for an unlimited 'before' run)",
                        _model([_fillers(f"{i}.weight", [2 ** 12, 2 ** 15], 12, 8000) for i in range(3)])),
        "fillers-every-page": ("2^31 values, an entry every 1,024 (every 4 kB page), 2M entries",
                               _model([_fillers("0.weight", big, 10, 2 ** 21)])),
        "at-the-element-limit": ("2^25 values (the default limit), an entry every 8: 4M entries, "
                                 "1 MB", _model([_fillers("0.weight", [2 ** 25], 3, 2 ** 22)])),
        "tensor-limit-small": (f"{ff.MIN_MAX_TENSORS} sparse tensors of 200 entries (block decoder)",
                               _model([_dense(str(i), 200) for i in range(ff.MIN_MAX_TENSORS)])),
        "tensor-limit-1MB": (f"{ff.MIN_MAX_TENSORS} sparse tensors of 1,950 entries, 1 MB",
                             _model([_dense(str(i), 1950) for i in range(ff.MIN_MAX_TENSORS)])),
        "20k-tensors": ("20,000 sparse tensors of one entry (past the tensor limit)",
                        _model([_dense(str(i), 1) for i in range(20000)])),
        "1MiB-header": ("a header inflating to just under 1 MiB, one tensor",
                        _model([_dense("0", 8)], pad="x" * (ff.MAX_HEADER_BYTES - 200))),
        **_worst_v3(),
    }
    for k, (_, data) in files.items():
        assert len(data) <= 1_100_000, (k, len(data))
    return files


def _worst_v3() -> dict[str, tuple[str, bytes]]:
    """Version 3's worst files: the most entries 1 MB may declare (2 bits each), and a bomb."""
    import numpy as np
    import torch

    from sws.format import binheader
    from sws.format import container as ff
    cb = np.array([0.0, 0.5], np.float32)
    dense = torch.full((1 << 22,), 0.5)
    every8 = torch.zeros(1 << 25)
    every8[7::8] = 0.5
    records = [{"name": f"{i}.weight", "shape": [2 ** 16, 2 ** 15], "coding": "sparse-range", "entries": 0}
               for i in range(3)]
    hb = binheader.encode({"name": "bomb"}, cb, records)
    body = struct.pack("<8sI", MAGIC, 3) + binheader.varint(len(hb)) + binheader.varint(0) + hb
    return {"v3-dense-1MB": ("version 3: 4M entries in a row (2 bits each: the most 1 MB holds)",
                             ff.encode({"w": dense}, cb, ["w"], {"name": "x"})),
            "v3-every-8": ("version 3: 2^25 values (the default limit), an entry every 8, 4M entries",
                           ff.encode({"w": every8}, cb, ["w"], {"name": "x"})),
            "v3-bomb": ("version 3: 3 sparse tensors of 2^31 values, no entries",
                        body + struct.pack("<I", zlib.crc32(body)))}


_CHILD = r"""
import json, resource, sys, time
what, path = sys.argv[1], sys.argv[2]
import sws
from sws.format.stats import file_stats, format_stats
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
try:
    if what == "inspect":
        format_stats(file_stats(open(path, "rb").read()))
    else:
        sws.load(path)
    outcome = "ok"
except Exception as e:   # noqa: BLE001 - reported, not raised
    outcome = type(e).__name__ + ": " + str(e).replace(path, "F")[:160]
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"outcome": outcome, "seconds": seconds, "cpu_s": cpu, "base_rss_mib": base / 1024,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _limit_address_space(limit_bytes):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


def measure(files, src: Path, limit_bytes=None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    env.pop("SWS_MAX_ELEMENTS", None)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (what, data) in files.items():
            path = Path(tmp) / "f.sws"
            path.write_bytes(data)
            row = {"what": what, "bytes": len(data)}
            for step in ("inspect", "load"):
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", _CHILD, step, str(path)], env=env,
                                      capture_output=True, text=True, timeout=600,
                                      preexec_fn=_limit_address_space(limit_bytes) if limit_bytes else None)
                wall = time.perf_counter() - t0
                if proc.returncode == 0 and proc.stdout.strip():
                    row[step] = json.loads(proc.stdout.strip().splitlines()[-1])
                else:
                    last = (proc.stderr.strip().splitlines() or [""])[-1][:160]
                    row[step] = {"outcome": f"exit {proc.returncode}: {last}", "seconds": None,
                                 "cpu_s": None, "peak_rss_mib": None, "base_rss_mib": None}
                row[step]["process_wall_s"] = wall
            out[name] = row
    return out


def _before_source(rev: str) -> tempfile.TemporaryDirectory:
    tmp = tempfile.TemporaryDirectory()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", tmp.name], input=archive, check=True)
    return tmp


# --- report ------------------------------------------------------------------------------

def _short(outcome: str) -> str:
    """The error's name and the start of its message (the message names the limit)."""
    return outcome if len(outcome) <= 60 else outcome[:57] + "..."


def markdown(res: dict) -> str:
    lines = []
    for key in ("fuzz", "fuzz_v3"):
        if key not in res:
            continue
        f = res[key]
        which = "version 3" if key == "fuzz_v3" else "versions 1-2"
        lines += [f"Fuzz ({which}): {f['cases']:,} files ({f['file_bytes'][0]}-{f['file_bytes'][1]} bytes), "
                  f"seed {f['seed']}, {f['wall_s']:.0f} s; slowest case {f['max_case_seconds'] * 1000:.0f} ms "
                  f"(decode and inspect), largest traced peak {f['max_traced_peak_mib']:.1f} MiB", "",
                  "| outcome | decode | inspect |", "| --- | ---: | ---: |"]
        for k in sorted(set(f["decode"]) | set(f["inspect"])):
            lines.append(f"| {k} | {f['decode'].get(k, 0):,} | {f['inspect'].get(k, 0):,} |")
        edits = collections.defaultdict(dict)
        for edit_outcome, c in f["by_edit"].items():
            edit, outcome = edit_outcome.split("|")
            edits[edit][outcome] = c
        outcomes = sorted({o for d in edits.values() for o in d})
        lines += ["", "| edit (decode outcome) | " + " | ".join(outcomes) + " |",
                  "| --- |" + " ---: |" * len(outcomes)]
        for edit in sorted(edits):
            lines.append(f"| {edit} | " + " | ".join(f"{edits[edit].get(o, 0):,}" for o in outcomes) + " |")
    if "fuzz_before" in res:
        f = res["fuzz_before"]
        lines += ["", f"The same {res['fuzz']['cases']:,} cases against {res.get('before_rev')} (4 GiB "
                  f"address-space limit): {f.get('over_1s', '?')} calls over 1 s, the slowest "
                  f"{f.get('max_seconds', 0):.2f} s", "", "| call | outcome | cases |", "| --- | --- | ---: |"]
        for key, c in sorted(f.get("outcomes", {}).items()):
            call, outcome = key.split("|")
            lines.append(f"| {call} | {outcome} | {c:,} |")
        if "error" in f:
            lines.append(f"(the run stopped: {f['error']})")
    if "huffman" in res:
        lines += ["", "Huffman decoding of 8,000,000 bits (traced peak):", "",
                  "| decoder | code | symbols | s | peak MiB | bytes per bit |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for key, r in res["huffman"].items():
            label, code = key.split("|")
            lines.append(f"| {label} | {code} | {r['symbols']:,} | {r['seconds']:.2f} | {r['peak_mib']:.0f} "
                         f"| {r['bytes_per_bit']:.1f} |")
    for label in ("after", "before"):
        if label not in res:
            continue
        lines += ["", f"Worst files ({label}):", "",
                  "| file | bytes | inspect: outcome | wall s | CPU s | peak RSS MiB "
                  "| load: outcome | wall s | CPU s | peak RSS MiB |",
                  "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
        for name, row in res[label].items():
            cells = []
            for step in ("inspect", "load"):
                r = row[step]
                s = "-" if r["seconds"] is None else f"{r['seconds']:.3f}"
                c = "-" if r.get("cpu_s") is None else f"{r['cpu_s']:.3f}"
                m = "-" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"
                cells += [_short(r["outcome"]), s, c, m]
            lines.append(f"| {name} | {row['bytes']:,} | " + " | ".join(cells) + " |")
        bases = [row[s]["base_rss_mib"] for row in res[label].values() for s in ("inspect", "load")
                 if row[s]["base_rss_mib"]]
        if bases:
            lines.append(f"\n(RSS after importing sws, before the call: {min(bases):.0f}-{max(bases):.0f} MiB)")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000, help="fuzz cases (0: skip the fuzz)")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--before", metavar="REV", help="also measure the worst files at this git revision")
    ap.add_argument("--no-worst", action="store_true", help="skip the worst files")
    ap.add_argument("--huffman", action="store_true", help="also the Huffman decoder's memory")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    res = {"machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start",
           "python": sys.version.split()[0], "before_rev": args.before}
    if not args.no_worst:
        files = worst_files()
        res["after"] = measure(files, ROOT / "src")
        if args.before:
            with _before_source(args.before) as src:
                res["before"] = measure(files, Path(src) / "src", limit_bytes=4 << 30)
    if args.huffman:
        res["huffman"] = huffman_memory(args.before)
    if args.cases:
        res["fuzz"] = fuzz(args.cases, args.seed)
        res["fuzz_v3"] = fuzz(args.cases, args.seed, v3=True)
        if args.before:
            with _before_source(args.before) as src:
                res["fuzz_before"] = fuzz_before(args.cases, args.seed, Path(src) / "src")
    print(markdown(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
