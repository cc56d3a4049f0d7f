"""Tokenizers for the text encoders, all with one call: `tokenizer(texts, max_length) -> (ids, mask)`.

`ids` is `[batch, max_length]` int32 right-padded with the tokenizer's pad id; `mask` is `[batch, max_length]` bool,
True on real tokens (special tokens included). Captions longer than `max_length` are truncated, keeping the
closing special token (EOS / [SEP] / <|endoftext|>) so last-token pooling still sees it.

Kinds: `bytes` (the skeleton's UTF-8 byte ids), `sentencepiece` (T5's `spiece.model`, EOS appended as T5 does),
`hf_json` (a Hugging Face `tokenizer.json`, e.g. CLIP's BPE or BERT's WordPiece, run by the `tokenizers` library).
"""
from __future__ import annotations

import json
import os
from typing import Protocol

import numpy as np

from stiv_jax.encoders import text_embedding


class Tokenizer(Protocol):
    vocab_size: int

    def __call__(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        ...


class ByteTokenizer:
    """UTF-8 bytes + 1 (0 is padding); no special tokens."""

    vocab_size = 256 + text_embedding.BYTE_OFFSET

    def __call__(self, texts, max_length):
        return text_embedding.tokenize_bytes(list(texts), max_length)


def _pad(rows: list[list[int]], max_length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(rows), max_length), pad_id, np.int32)
    mask = np.zeros((len(rows), max_length), bool)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = True
    return ids, mask


class SentencePieceTokenizer:
    """T5's sentencepiece tokenizer: pieces + EOS (`</s>`), padded with the pad id (0 for T5)."""

    def __init__(self, path: str):
        import sentencepiece

        model_file = os.path.join(path, "spiece.model") if os.path.isdir(path) else path
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f"No sentencepiece model at {model_file!r} (text.tokenizer.path).")
        self.processor = sentencepiece.SentencePieceProcessor(model_file=model_file)
        self.eos_id = self.processor.eos_id()
        self.pad_id = max(self.processor.pad_id(), 0)
        self.vocab_size = self.processor.get_piece_size()

    def __call__(self, texts, max_length):
        rows = []
        for pieces in self.processor.encode(list(texts)):
            pieces = pieces[:max_length - 1] if self.eos_id >= 0 else pieces[:max_length]
            rows.append(pieces + ([self.eos_id] if self.eos_id >= 0 else []))
        return _pad(rows, max_length, self.pad_id)


class HFJsonTokenizer:
    """A Hugging Face fast tokenizer file (`tokenizer.json`), with the pad token of `tokenizer_config.json`."""

    def __init__(self, path: str):
        import tokenizers

        directory = path if os.path.isdir(path) else os.path.dirname(path)
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"No tokenizer.json at {file!r} (text.tokenizer.path).")
        self.tokenizer = tokenizers.Tokenizer.from_file(file)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        pad_token = None
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            config_file = os.path.join(directory, name)
            if pad_token is None and os.path.isfile(config_file):
                with open(config_file) as f:
                    value = json.load(f).get("pad_token")
                pad_token = value.get("content") if isinstance(value, dict) else value
        pad_id = self.tokenizer.token_to_id(pad_token) if pad_token else None
        self.pad_id = 0 if pad_id is None else pad_id
        self.vocab_size = self.tokenizer.get_vocab_size()

    def __call__(self, texts, max_length):
        self.tokenizer.enable_truncation(max_length)
        rows = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        return _pad(rows, max_length, self.pad_id)


def build_tokenizer(kind: str, path: str) -> Tokenizer:
    """The tokenizer of `kind` (`bytes`, `sentencepiece`, `hf_json`) read from the local `path`."""
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "sentencepiece":
        return SentencePieceTokenizer(path)
    if kind == "hf_json":
        return HFJsonTokenizer(path)
    raise ValueError(f"config.text.tokenizer.kind={kind!r} is not known; valid: bytes, sentencepiece, hf_json")
