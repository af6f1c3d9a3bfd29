"""Small data the project owns: tokenizer files, model configs, the celebrity name list, prompt templates."""
from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent


def asset_path(*parts: str) -> Path:
    return ASSETS.joinpath(*parts)


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """The CLIP BPE tokenizer every SD text encoder uses, offline. SD1.x/SDXL-L pad with EOS, SD2.x/SDXL-G with '!'."""
    from transformers import CLIPTokenizer

    folder = asset_path("clip_tokenizer")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token, model_max_length=77)


def read_lines(path: str | Path) -> list[str]:
    """Non-empty, non-comment lines of a text file (duplicates kept: they weigh in averages)."""
    text = Path(path).read_text(encoding="utf-8")
    if "\x00" in text:
        raise ValueError("it contains NUL bytes: a binary file, not text")
    lines = text.splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
