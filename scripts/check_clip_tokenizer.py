#!/usr/bin/env python3
"""Differential check of `iadgpt tokenize` against a Python CLIP BPE tokenizer (dev-time only).

Writes N random texts built from tricky pieces (HTML references, final sigma, İ, ſ, U+0345,
combining marks, odd whitespace, emoji, specials), tokenizes them with a straightforward Python
implementation of the CLIP pipeline (python3-regex, html, str.lower; no ftfy, like iadgpt) and
with the built program, and reports mismatches.

    python3 scripts/check_clip_tokenizer.py build/iadgpt ../shared/data/tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz [seed] [n]
"""
import gzip
import html
import json
import random
import subprocess
import sys
import tempfile

import regex


def bytes_to_unicode():
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs)))


class Tokenizer:
    PATTERN = regex.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"
                            r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", regex.IGNORECASE)
    SPECIALS = ("<|startoftext|>", "<|endoftext|>")

    def __init__(self, vocab_path):
        lines = gzip.open(vocab_path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
        merges = [tuple(line.split()) for line in lines]
        self.byte_map = bytes_to_unicode()
        symbols = list(self.byte_map.values())
        symbols += [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(self.SPECIALS)
        self.ids = {s: i for i, s in enumerate(symbols)}
        self.ranks = {m: i for i, m in enumerate(merges)}

    def bpe(self, piece):
        if piece in self.SPECIALS:
            return [piece]
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(word) > 1:
            best = min(zip(word, word[1:]), key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def row(self, text):
        text = html.unescape(html.unescape(text)).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = [49406]
        for piece in self.PATTERN.findall(text):
            piece = "".join(self.byte_map[b] for b in piece.encode("utf-8"))
            ids += [self.ids[s] for s in self.bpe(piece)]
        ids.append(49407)
        if len(ids) > 77:
            ids = ids[:76] + [49407]
        return ids + [0] * (77 - len(ids))


PIECES = list("abcxyzABCXYZ '&;#0123456789.,!?-_<|>") + [
    "&amp;", "&lt", "&#233;", "&#x41;", "&eacute;", "&notit;", "&#128;", "&#0;", "&ampx",
    "&NotEqualTilde;", "Σ", "ΣΑΣ", "Ά", "ς", "İ", "ß", "ẞ", "ſ", "'S", "'ſ", "ǅ", "Ⅻ", "ⅻ", "½",
    "٣", "\u0301", "\u0345", "\u00ad", "\u200b", "\u200d", "\u00a0", "\u0085", "\u2028", "\u3000",
    "\x1c", "\x1f", "\t", "👍🏽", "🇺🇸", "猫", "한", "ก", "ि", "<|endoftext|>", "<|STARTOFTEXT|>",
    "Ǆ", "K", "Å", "ﬁ", "Ω", "ꞵ", "𝔄", "Ⓐ", "ⓐ", "\U0001E900", "ẞ", "’", "ǈ", "ῼ", "Ϊ"]


def main():
    program, vocab = sys.argv[1], sys.argv[2]
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 3000
    rng = random.Random(seed)
    texts = ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 25))) for _ in range(count)]
    tok = Tokenizer(vocab)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt") as f:
        f.write("".join(t + "\n" for t in texts))
        f.flush()
        out = subprocess.run([program, "--threads", "1", "tokenize", "--vocab", vocab, "--file", f.name],
                             check=True, capture_output=True, text=True).stdout
    got = [json.loads(line) for line in out.split("\n") if line]  # not splitlines(): U+2028 etc.
    assert len(got) == len(texts), (len(got), len(texts))
    bad = [(t, g["ids"]) for t, g in zip(texts, got) if g["ids"] != tok.row(t)]
    for t, ids in bad[:5]:
        print(repr(t), "\n  python:", tok.row(t)[:24], "\n  iadgpt:", ids[:24])
    print(f"{len(texts)} texts, {len(bad)} mismatches")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
