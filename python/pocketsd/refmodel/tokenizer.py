"""CLIP BPE files for the reference model's vocabulary.

CLIP's byte-level BPE needs a vocab.json and merges.txt; the real ones are 49k entries of
English. Ours keeps CLIP's byte alphabet (so any text still tokenizes) and adds merges only
for the grammar's words, so each of them is one token.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ..data.grammar import grammar_words

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@lru_cache(maxsize=1)
def _byte_alphabet() -> list[str]:
    # CLIP/GPT-2's reversible byte → printable character map.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def build_vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    for ch in alphabet:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    # Longest words first: their chains then outrank the short words' merges, which would
    # otherwise fire inside a long word and leave it split (e.g. "to" inside "bottom").
    for word in sorted(words, key=lambda w: (-len(w), w)):
        if len(word) < 2:
            continue
        left = word[0]
        for i, ch in enumerate(word[1:], start=1):
            right = ch + ("</w>" if i == len(word) - 1 else "")
            pair = (left, right)
            if pair not in merges:
                merges.append(pair)
            left = left + right
            vocab.setdefault(left, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, merges


def write_tokenizer(folder: Path, words: list[str] | None = None, require_single_tokens: bool = True) -> None:
    """Write a folder `CLIPTokenizer.from_pretrained` loads, and check every word is one token (the reference
    grammar's must be; a large open vocabulary, such as benchmarks/sdxl_real_size.py's, only needs to tokenize)."""
    from transformers import CLIPTokenizer

    words = words or grammar_words()
    vocab, merges = build_vocab_and_merges(words)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS})
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": BOS,
                "eos_token": EOS,
                "pad_token": EOS,
                "unk_token": EOS,
                "do_lower_case": True,
            }
        )
    )
    tok = CLIPTokenizer.from_pretrained(folder)
    split = [w for w in words if len(tok.tokenize(w)) != 1] if require_single_tokens else []
    if split:
        raise RuntimeError(f"BPE merges split grammar words: {split}")
