"""Build the offline CLIP BPE tokenizer files shipped in anybody/assets/clip_tokenizer.

Why: the CLI and the tests must run with no network, so the project ships the tokenizer every SD1.x/SD2.x/
SDXL text encoder uses. The vocabulary is derived from OpenAI CLIP's BPE merge list (MIT licence), which is
distributed as ``bpe_simple_vocab_16e6.txt.gz`` (e.g. inside the ``open_clip_torch`` wheel). This script turns
that merge list into the ``vocab.json`` + ``merges.txt`` pair that ``transformers.CLIPTokenizer`` reads.

Usage: python tools/build_clip_tokenizer.py path/to/bpe_simple_vocab_16e6.txt.gz
"""
import gzip
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "anybody" / "assets" / "clip_tokenizer"
N_MERGES = 49152 - 256 - 2


def byte_symbols() -> list[str]:
    """The printable stand-in character for each byte value, in CLIP's order (GPT-2 byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def main(bpe_path: str) -> None:
    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(vocab)} tokens, {len(merges)} merges)")


if __name__ == "__main__":
    main(sys.argv[1])
